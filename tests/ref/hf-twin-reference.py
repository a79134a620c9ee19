#!/usr/bin/env python3
"""hf-twin-reference.py: what llama.cpp's convert_hf_to_gguf.py writes for the tiny Hugging Face
checkpoints of hf_tiny.py, recorded as digests in tests/data/ref_hf_twin.json.

tests/unit/test_hf.c (same_keys_and_tensors_as_converter, no torch needed) writes the same
directories with hf_tiny.py, opens each with spk_gguf_open(dir) and checks that our in-memory GGUF
has exactly these metadata keys (types and value digests) and byte-identical tensors (names,
types, shapes, sha256). The forward pass reads nothing else, so this is the same-logits check of
tests/sh/hf_twin.sh (which runs the converter itself where torch is installed) without torch.

Converter settings as in tests/sh/hf_twin.sh: --outtype f32 (bf16 for llama3-hd), and
TextModel.get_vocab_base_pre patched to return 'qwen2' (the tiny byte-level vocabulary has no
pre-tokenizer hash llama.cpp knows).

Value digest: sha256 over the value in GGUF's own little-endian encoding, without the key and
without the value-type field: a number as its type's bytes (bool 1 byte), a string as uint64
length + UTF-8 bytes, an array as uint32 element type + uint64 count + each element so encoded.

Usage: hf-twin-reference.py --src LLAMACPP_SRC --out tests/data/ref_hf_twin.json [--work DIR]
(in $SPK_CACHE/hfref-venv: the converter needs torch; tests/ref/hf-twin-reference.sh runs it)
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

COMMENT = ('llama.cpp convert_hf_to_gguf.py output for hf_tiny.py directories (tests/ref/hf-twin-reference.sh '
           'regenerates this; tests/unit/test_hf.c checks spk_gguf_open(dir) against it). keys: GGUF value type '
           '(elem, n for arrays) and sha256 of the value in GGUF little-endian encoding without key and type field: '
           'a number as its type bytes (bool 1 byte), a string as uint64 length + bytes, an array as uint32 element '
           'type + uint64 count + the elements so encoded; value (short ones): for reading only. tensors: ggml type, shape '
           '(ne, innermost first), sha256 of the data bytes. fnv1a64: hf_tiny.py hash of the safetensors converted.')
TWINS = [('llama-f32', 'f32'), ('qwen3-f32', 'f32'), ('llama3-hd', 'bf16'), ('qwen3moe-f32', 'f32'), ('gptoss-f32', 'f32'),
         ('gptoss-mxfp4', 'bf16')]

CONVERT = r'''
import sys
src, d, t, out = sys.argv[1:5]
sys.path.insert(0, src + '/gguf-py'); sys.path.insert(0, src)
import convert_hf_to_gguf as c, conversion.base as cb
cb.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
sys.argv = ['convert_hf_to_gguf.py', d, '--outtype', t, '--outfile', out]
c.main()
'''


def record(path, gguf):
    r = gguf.GGUFReader(path)
    keys = {}
    for name, f in r.fields.items():
        if name.startswith('GGUF.'):  # the reader's pseudo-fields (version, counts)
            continue
        vt = int(f.types[0])
        raw = b''.join(bytes(p.tobytes()) for p in f.parts[3:])  # parts: key len, key, type, value...
        k = {'type': vt, 'sha256': hashlib.sha256(raw).hexdigest()}
        if vt == gguf.GGUFValueType.ARRAY:
            k['elem'] = int(f.types[1]) if len(f.types) > 1 else int.from_bytes(raw[:4], 'little')
            k['n'] = int.from_bytes(raw[4:12], 'little')
        elif vt != gguf.GGUFValueType.STRING or len(f.contents()) <= 80:
            k['value'] = f.contents()  # for people reading a mismatch; the test checks the digest
        keys[name] = k
    tensors = {}
    for t in r.tensors:
        data = bytes(r.data[t.data_offset:t.data_offset + t.n_bytes])
        tensors[t.name] = {'type': int(t.tensor_type), 'shape': [int(x) for x in t.shape],
                           'sha256': hashlib.sha256(data).hexdigest()}
    return keys, tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--src', required=True, help='llama.cpp sources (convert_hf_to_gguf.py, gguf-py)')
    ap.add_argument('--out', required=True)
    ap.add_argument('--work')
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.src, 'gguf-py'))
    import gguf
    work = a.work or tempfile.mkdtemp(prefix='spk-hf-twin.')
    out = subprocess.run([sys.executable, os.path.join(HERE, 'hf_tiny.py'), work] + [v for v, _ in TWINS],
                         check=True, capture_output=True, text=True).stdout
    fnv = dict(line.split() for line in out.splitlines() if line.strip())
    res = {'comment': COMMENT,
           'converter': 'llama.cpp convert_hf_to_gguf.py from ' + os.path.basename(os.path.dirname(os.path.dirname(
               os.path.abspath(a.src)))) + ', get_vocab_base_pre -> qwen2',
           'variants': {}}
    for v, t in TWINS:
        g = os.path.join(work, v + '.gguf')
        p = subprocess.run([sys.executable, '-c', CONVERT, a.src, os.path.join(work, v), t, g],
                           capture_output=True, text=True)
        if p.returncode:
            sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
            sys.exit('converter failed on ' + v)
        keys, tensors = record(g, gguf)
        res['variants'][v] = {'outtype': t, 'fnv1a64': fnv[v], 'keys': keys, 'tensors': tensors}
        print(v, len(keys), 'keys', len(tensors), 'tensors')
    with open(a.out, 'w') as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write('\n')


if __name__ == '__main__':
    main()

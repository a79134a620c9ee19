#!/usr/bin/env python3
"""gptoss-quant-reference.py: llama.cpp's log-probs on quantized files of the tiny synthetic MoE models,
each file made by llama.cpp's own llama-quantize from our writer's F32 file (run by
tests/ref/gptoss-quant-reference.sh, which writes the F32 files with spk-synth and quantizes them).

For every quantized file (--case NAME F32 QUANTIZED FTYPE [OURS]) the JSON entry holds
  ftype           the llama-quantize type argument (MXFP4_MOE, Q8_0, Q4_K_M)
  f32_fnv1a64     FNV-1a 64 of the F32 input (the test writes the same bytes and checks the hash)
  file_fnv1a64    FNV-1a 64 of llama-quantize's output (the test checks it when it reads that file)
  tensor_types    {tensor type name: count} of llama-quantize's output (what it chose per tensor:
                  Q4_K_M on embeddings of 128 falls back to Q5_0/Q5_K/Q8_0, so the K-quant case
                  uses embd 256 and expert width 256)
  ours_identical  OURS given (our writer's file with the same types per tensor): every tensor's
                  name, type, shape and bytes equal in both files (the test then writes OURS
                  itself instead of needing llama-quantize); else null
  differing       the tensors that differ (empty when identical)
  llamacpp        llama.cpp's top-8 log-probs per position and 12 greedy tokens for qwen3-reference.py's
                  three sequences (the layout of ref_gptoss.json's "llamacpp")
Needs the llama.cpp python binding of tests/ref/build-llamacpp.sh (no torch).
"""
import argparse
import collections
import importlib.util
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('qwen3ref', os.path.join(here, 'qwen3-reference.py'))
q3 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(q3)


# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ('F32', 1, 4), 1: ('F16', 1, 2), 2: ('Q4_0', 32, 18), 3: ('Q4_1', 32, 20), 6: ('Q5_0', 32, 22),
              7: ('Q5_1', 32, 24), 8: ('Q8_0', 32, 34), 10: ('Q2_K', 256, 84), 11: ('Q3_K', 256, 110),
              12: ('Q4_K', 256, 144), 13: ('Q5_K', 256, 176), 14: ('Q6_K', 256, 210), 30: ('BF16', 1, 2),
              39: ('MXFP4', 32, 17)}


def tensor_table(path):
    """{name: (type name, shape, raw bytes)} of a GGUF v3 file (the metadata skipped by qwen3-reference's reader)."""
    import struct
    buf = open(path, 'rb').read()
    off = [8]

    def rd(fmt):
        v = struct.unpack_from('<' + fmt, buf, off[0])
        off[0] += struct.calcsize('<' + fmt)
        return v[0]

    def rstr():
        n = rd('Q')
        off[0] += n
        return buf[off[0] - n:off[0]].decode()
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t):
        if t == 8:
            rstr()
        elif t == 9:
            et, n = rd('I'), rd('Q')
            for _ in range(n):
                skip(et)
        else:
            off[0] += sizes[t]
    n_t, n_kv = rd('Q'), rd('Q')
    align = 32
    for _ in range(n_kv):
        k, t = rstr(), rd('I')
        if k == 'general.alignment':
            align = rd('I')
        else:
            skip(t)
    infos = []
    for _ in range(n_t):
        name, nd = rstr(), rd('I')
        ne = [rd('Q') for _ in range(nd)]
        infos.append((name, ne, rd('I'), rd('Q')))
    data0 = (off[0] + align - 1) // align * align
    out = {}
    for name, ne, ty, o in infos:
        tn, blk, bs = GGML_TYPES[ty]
        n = 1
        for x in ne:
            n *= x
        out[name] = (tn, ne, buf[data0 + o:data0 + o + n // blk * bs])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--llamacpp-src', required=True)
    ap.add_argument('--case', nargs='+', action='append', required=True,
                    metavar=('NAME F32 QUANTIZED FTYPE', 'OURS'))
    ap.add_argument('--about', default='')
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    out = {'about': 'llama.cpp (llama-quantize, then its own log-probs) on quantized files of our tiny synthetic '
                    'MoE models; regenerate with tests/ref/gptoss-quant-reference.sh. ' + args.about,
           'cases': {}}
    for c in args.case:
        name, f32, qpath, ftype = c[:4]
        ours = c[4] if len(c) > 4 else None
        theirs = tensor_table(qpath)
        types = collections.Counter(v[0] for v in theirs.values())
        entry = {'ftype': ftype, 'f32_fnv1a64': '%016x' % q3.fnv1a64(open(f32, 'rb').read()),
                 'file_fnv1a64': '%016x' % q3.fnv1a64(open(qpath, 'rb').read()),
                 'file_bytes': os.path.getsize(qpath), 'tensor_types': dict(sorted(types.items())),
                 'ours_identical': None, 'differing': []}
        if ours:
            mine = tensor_table(ours)
            diff = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
            entry['ours_identical'] = not diff
            entry['differing'] = diff[:20]
        kv, _, _ = q3.read_gguf(qpath)
        arch = kv['general.architecture']
        seqs = q3.ref_sequences(len(kv['tokenizer.ggml.tokens']))
        entry['llamacpp'] = q3.llamacpp_refs(qpath, seqs)
        entry['arch'] = arch
        out['cases'][name] = entry
        print('%s: %s %s, types %s, ours identical: %s' % (name, arch, ftype, dict(types), entry['ours_identical']),
              file=sys.stderr)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=None, separators=(',', ':'))
        f.write('\n')
    print('wrote', args.out, file=sys.stderr)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""gen-tok-vocabs.py: tokenizer reference ids for the pre-tokenizers of the model families
(tests/data/ref_tok_vocabs.json, read by tests/unit/test_tokenizer_vocabs.c).

The vocabularies are llama.cpp's vocab-only GGUF files (models/ggml-vocab-*.gguf of the llama.cpp
sources that tests/ref/build-llamacpp.sh unpacks); they are not committed, and the test skips a
vocabulary (printing why) when the file is absent. For each vocabulary:

  - llama.cpp's own test set: models/ggml-vocab-NAME.gguf.inp / .out, the strings and the ids
    that llama.cpp's test-tokenizer-0 asserts it produces (add_special=false,
    parse_special=false; made from the Hugging Face tokenizer by convert_hf_to_gguf_update.py):
    multilingual text, code, digits, emoji, whitespace runs.
  - when llama-tokenize is given (--llama-tokenize), our extra strings with special-token text,
    tokenized by it with and without parse_special, and the gpt-4o and tekken pre-tokenizers:
    the qwen2 and llama-bpe vocabularies with tokenizer.ggml.pre rewritten (by gguf-py, into a
    temporary file) to "gpt-4o" / "tekken", so llama.cpp splits with those regexes (the vocab
    files of the real GPT-4o / Tekken tokenizers are not in the llama.cpp sources).

Usage: python3 gen-tok-vocabs.py --models DIR [--llama-tokenize BIN --gguf-py DIR] --out FILE
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SEP = '\n__ggml_vocab_test__\n'
VOCABS = ['gpt-2', 'qwen2', 'llama-bpe', 'llama-spm']

EXTRA = [
    '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
    '<|endoftext|> after end',
    '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
    '[INST] Bonjour [/INST]',
    'def f(x):\n    return x**2  # square\n\n\tprint(f"{x:>10}")',
    'Numbers: 1234567890 3.14159 -42 1,000,000 007',
    'Ünïcödé façade naïve résumé Straße ΑΒΓ αβγ Привет мир 你好，世界 こんにちは 안녕하세요 مرحبا',
    'emoji 🦙🚀👩‍👩‍👧‍👦 🇫🇷 ✨',
    'spaces:  two   three    four\t\ttabs\n\n\nnewlines \r\n crlf',
    "CamelCaseWords HTTPServer iPhone XMLHttpRequest don't I'LL we've",
    '   leading and trailing   ',
    'a/b/c path/to/file.txt http://example.com/x?y=1&z=2',
]


def read_inp_out(models, name):
    """The .inp/.out pair split exactly as llama.cpp's test-tokenizer-0 reads it."""
    raw = open(os.path.join(models, 'ggml-vocab-%s.gguf.inp' % name), 'rb').read().decode('utf-8')
    out = open(os.path.join(models, 'ggml-vocab-%s.gguf.out' % name), 'rb').read().decode('utf-8')
    lines = out.split('\n')
    if lines and lines[-1] == '':
        lines.pop()  # getline: no line after the final newline
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    assert len(texts) == len(lines), (name, len(texts), len(lines))
    return [{'text': t, 'ids': [int(x) for x in o.strip().split()]} for t, o in zip(texts, lines)]


def llama_tokenize(binary, model, text, parse_special):
    with tempfile.NamedTemporaryFile('w', encoding='utf-8', delete=False) as f:
        f.write(text)
        path = f.name
    try:
        cmd = [binary, '-m', model, '-f', path, '--ids', '--log-disable', '--no-bos']
        if not parse_special:
            cmd.append('--no-parse-special')
        r = subprocess.run(cmd, capture_output=True, check=True)
        line = r.stdout.decode().strip().splitlines()[-1]
        return json.loads(line)
    finally:
        os.unlink(path)


def rewrite_pre(gguf_py, src, dst, pre):
    sys.path.insert(0, gguf_py)
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=r.fields['general.architecture'].contents())
    for k, f in r.fields.items():
        if k.startswith('GGUF.') or k == 'general.architecture':
            continue
        v = pre if k == 'tokenizer.ggml.pre' else f.contents()
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, v, vt, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--llama-tokenize')
    ap.add_argument('--gguf-py')
    a = ap.parse_args()
    res = {'about': 'ids per vocabulary; see tests/ref/gen-tok-vocabs.py', 'vocabs': []}
    for name in VOCABS:
        v = {'name': name, 'file': 'ggml-vocab-%s.gguf' % name, 'pre': None,
             'cases': read_inp_out(a.models, name), 'source': 'llama.cpp models/ggml-vocab-%s.gguf.inp/.out' % name}
        if a.llama_tokenize:
            model = os.path.join(a.models, v['file'])
            for t in EXTRA:
                v['cases'].append({'text': t, 'ids': llama_tokenize(a.llama_tokenize, model, t, False),
                                   'ids_special': llama_tokenize(a.llama_tokenize, model, t, True)})
            v['source'] += ' + llama-tokenize on the extra strings'
        res['vocabs'].append(v)
    if a.llama_tokenize and a.gguf_py:
        tmp = tempfile.mkdtemp()
        for base, pre in [('qwen2', 'gpt-4o'), ('llama-bpe', 'gpt-4o'), ('qwen2', 'tekken'), ('llama-bpe', 'tekken')]:
            dst = os.path.join(tmp, '%s-as-%s.gguf' % (base, pre))
            rewrite_pre(a.gguf_py, os.path.join(a.models, 'ggml-vocab-%s.gguf' % base), dst, pre)
            texts = [c['text'] for c in read_inp_out(a.models, base)] + EXTRA
            cases = [{'text': t, 'ids': llama_tokenize(a.llama_tokenize, dst, t, False)} for t in texts]
            res['vocabs'].append({'name': '%s-as-%s' % (base, pre), 'file': 'ggml-vocab-%s.gguf' % base, 'pre': pre,
                                  'cases': cases,
                                  'source': 'llama-tokenize on ggml-vocab-%s.gguf with tokenizer.ggml.pre = %s'
                                            % (base, pre)})
    with open(a.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, ensure_ascii=False, indent=None, separators=(',', ':'))
        f.write('\n')


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""gen-hf-tok.py: Hugging Face tokenizer directories for test_hf_tok, and their reference ids.

No Hugging Face hub here, so the tokenizer.json files are made from llama.cpp's vocab-only GGUF
files (models/ggml-vocab-*.gguf of the llama.cpp sources, tests/ref/fetch-llamacpp-src.sh) with the
normalizer / pre_tokenizer / decoder / post_processor configuration the real files of each family
have (Llama 3, Qwen2, GPT-2, SmolLM, GPT-4o, Tekken byte-level BPE; Llama 2 SentencePiece as
transformers' LlamaConverter writes it, merges made from the scores as its SentencePieceExtractor
does). Each directory also gets tokenizer_config.json (bos/eos tokens, add_bos_token, the family's
chat template from llama.cpp's models/templates) and generation_config.json (eos ids).

  make DIR         write DIR/<family>/{tokenizer.json,tokenizer_config.json,generation_config.json}
                   (and DIR/<family>/family.json: the GGUF it came from, the pre name, the template)
  --ref FILE       with --write: store the strings and the `tokenizers` ids per family in FILE
                   (tests/data/ref_hf_tok.json); without: check that `tokenizers` on the files just
                   made still gives the ids in FILE (exit 1 naming the first difference)

Usage: python3 gen-hf-tok.py --models LLAMACPP/models --out DIR --ref tests/data/ref_hf_tok.json [--write]
Needs: tokenizers (PyPI). Reads GGUF with the small reader below (no gguf-py, no numpy).
"""
import argparse
import json
import os
import struct
import sys

LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
GPT4O_RE = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
            "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
            "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
TEKKEN_RE = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
             "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
             "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# family: GGUF vocab, our pre name, HF chain, chat template file, expected chat.c kind, merges form
FAMILIES = [
    dict(name='llama3', vocab='llama-bpe', pre='llama-bpe', split=LLAMA3_RE, ignore_merges=True, bos_post=True,
         template='meta-llama-Llama-3.1-8B-Instruct.jinja', chat='llama3', merges='pairs',
         eos='<|eot_id|>', gen_eos=['<|end_of_text|>', '<|reserved_special_token_3|>', '<|eot_id|>']),
    dict(name='qwen2', vocab='qwen2', pre='qwen2', split=QWEN2_RE, nfc=True,
         template='Qwen-Qwen3-0.6B.jinja', chat='qwen3', merges='strings',
         eos='<|im_end|>', gen_eos=['<|im_end|>', '<|endoftext|>']),
    dict(name='gpt-2', vocab='gpt-2', pre='gpt-2', bytelevel_regex=True,
         template='Qwen-Qwen2.5-7B-Instruct.jinja', chat='chatml', merges='strings', template_in='jinja_file',
         eos='<|endoftext|>', gen_eos=['<|endoftext|>']),
    dict(name='smollm', vocab='gpt-2', pre='smollm', digits=True, bytelevel_regex=True,
         template='Qwen-Qwen2.5-7B-Instruct.jinja', chat='chatml', merges='pairs', template_in='list',
         eos='<|endoftext|>', gen_eos=['<|endoftext|>']),
    dict(name='gpt-4o', vocab='qwen2', pre='gpt-4o', split=GPT4O_RE,
         template='Qwen-Qwen2.5-7B-Instruct.jinja', chat='chatml', merges='pairs',
         eos='<|im_end|>', gen_eos=['<|im_end|>']),
    dict(name='tekken', vocab='llama-bpe', pre='tekken', split=TEKKEN_RE, ignore_merges=True, bos_post=True,
         template='Mistral-Small-3.2-24B-Instruct-2506.jinja', chat='mistral-v7', merges='strings',
         eos='<|end_of_text|>', gen_eos=['<|end_of_text|>']),
    dict(name='llama-spm', vocab='llama-spm', pre=None, spm=True, bos_post=True, merges='strings',
         template=None, chat=None, eos='</s>', gen_eos=['</s>']),
    # the newer (legacy=false) form: Metaspace pre-tokenizer instead of the Prepend/Replace normalizer
    dict(name='llama-spm-metaspace', vocab='llama-spm', pre=None, spm=True, metaspace=True, bos_post=True,
         merges='pairs', template=None, chat=None, eos='</s>', gen_eos=['</s>']),
]

EXTRA = [
    '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
    '<|endoftext|> after end',
    '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
    '[INST] Bonjour [/INST]',
    '<s>[INST] sentencepiece specials </s>',
    'def f(x):\n    return x**2  # square\n\n\tprint(f"{x:>10}")',
    'Numbers: 1234567890 3.14159 -42 1,000,000 007 12345678901234567890',
    'Ünïcödé façade naïve résumé Straße ΑΒΓ αβγ Привет мир 你好，世界 こんにちは 안녕하세요 مرحبا',
    'नमस्ते दुनिया ภาษาไทย עברית Ελληνικά ÀÉÎÕÜ ǅungla',
    'emoji 🦙🚀👩‍👩‍👧‍👦 🇫🇷 ✨ ❤️',
    'spaces:  two   three    four\t\ttabs\n\n\nnewlines \r\n crlf',
    "CamelCaseWords HTTPServer iPhone XMLHttpRequest don't I'LL we've THEY'RE",
    '   leading and trailing   ',
    'a/b/c path/to/file.txt http://example.com/x?y=1&z=2',
    '{"json": [1, 2.5, null], "key": "value\\n"}',
    '\n',
    ' ',
    '  \n\n  \t ',
    'x',
    'Hello world',
    ' Hello world',
    '!!!???...,,,;;;',
]

SEP = '\n__ggml_vocab_test__\n'


# ---- a small GGUF metadata reader ------------------------------------------------------------

def read_gguf_kv(path):
    with open(path, 'rb') as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from('<' + fmt, data, pos)
        pos += struct.calcsize('<' + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take('Q')
        s = data[pos:pos + n]
        pos += n
        return s.decode('utf-8', errors='surrogateescape')

    scalar = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}

    def value(t):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return string()
        if t == 9:
            st = take('I')
            n = take('Q')
            return [value(st) for _ in range(n)]
        raise ValueError('gguf type %d' % t)

    assert data[:4] == b'GGUF', path
    pos = 4
    take('I')
    take('Q')
    nkv = take('Q')
    kv = {}
    for _ in range(nkv):
        k = string()
        kv[k] = value(take('I'))
    return kv


# ---- tokenizer.json ------------------------------------------------------------------------

def added(i, content, special):
    return {'id': i, 'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False,
            'normalized': not special, 'special': special}


def bytelevel(use_regex):
    return {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': use_regex}


def spm_merges(tokens, scores, types):
    """transformers' SentencePieceExtractor.extract: every split of a piece into two pieces,
    ordered by the piece's score (highest first), ties by the parts' ids."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (1, 6)}
    merges = []
    for piece, i in vocab.items():
        local = []
        for k in range(1, len(piece)):
            l, r = piece[:k], piece[k:]
            if l in vocab and r in vocab:
                local.append((l, r, scores[i]))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    return [(l, r) for l, r, _ in merges]


def make_family(models, fam, out):
    kv = read_gguf_kv(os.path.join(models, 'ggml-vocab-%s.gguf' % fam['vocab']))
    tokens = kv['tokenizer.ggml.tokens']
    types = kv.get('tokenizer.ggml.token_type', [1] * len(tokens))
    vocab, add = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (3, 4):  # CONTROL / USER_DEFINED: added tokens, as in the real files
            add.append(added(i, t, ty == 3))
            if fam.get('spm') or fam['name'] == 'gpt-2':  # these files also list them in the vocab
                vocab.setdefault(t, i)
        else:
            if t in vocab:
                raise SystemExit('%s: duplicate token %r' % (fam['name'], t))
            vocab[t] = i
    if fam.get('spm'):
        merges = spm_merges(tokens, kv['tokenizer.ggml.scores'], types)
        unk = tokens[kv.get('tokenizer.ggml.unknown_token_id', 0)]
        model = {'type': 'BPE', 'dropout': None, 'unk_token': unk, 'continuing_subword_prefix': None,
                 'end_of_word_suffix': None, 'fuse_unk': True, 'byte_fallback': True, 'ignore_merges': False,
                 'vocab': vocab}
        if unk in vocab and not any(a['content'] == unk for a in add):
            add.insert(0, added(vocab[unk], unk, True))
        normalizer = {'type': 'Sequence', 'normalizers': [
            {'type': 'Prepend', 'prepend': '\u2581'},
            {'type': 'Replace', 'pattern': {'String': ' '}, 'content': '\u2581'}]}
        pre_tokenizer = None
        if fam.get('metaspace'):
            normalizer = None
            pre_tokenizer = {'type': 'Metaspace', 'replacement': '\u2581', 'prepend_scheme': 'first', 'split': False}
        decoder = {'type': 'Sequence', 'decoders': [
            {'type': 'Replace', 'pattern': {'String': '\u2581'}, 'content': ' '},
            {'type': 'ByteFallback'}, {'type': 'Fuse'},
            {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]}
    else:
        merges = [tuple(m.split(' ', 1)) for m in kv['tokenizer.ggml.merges']]
        model = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': '' if
                 fam['name'] == 'gpt-2' else None, 'end_of_word_suffix': '' if fam['name'] == 'gpt-2' else None,
                 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': bool(fam.get('ignore_merges')),
                 'vocab': vocab}
        normalizer = {'type': 'NFC'} if fam.get('nfc') else None
        if fam.get('split'):
            pre_tokenizer = {'type': 'Sequence', 'pretokenizers': [
                {'type': 'Split', 'pattern': {'Regex': fam['split']}, 'behavior': 'Isolated', 'invert': False},
                bytelevel(False)]}
        elif fam.get('digits'):
            pre_tokenizer = {'type': 'Sequence', 'pretokenizers': [
                {'type': 'Digits', 'individual_digits': True}, bytelevel(True)]}
        else:
            pre_tokenizer = bytelevel(True)
        decoder = {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True}
    model['merges'] = ['%s %s' % m for m in merges] if fam['merges'] == 'strings' else [list(m) for m in merges]
    bos_id = kv.get('tokenizer.ggml.bos_token_id')
    bos = tokens[bos_id] if bos_id is not None else None
    if fam.get('bos_post'):
        post = {'type': 'TemplateProcessing',
                'single': [{'SpecialToken': {'id': bos, 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}],
                'pair': [{'SpecialToken': {'id': bos, 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}},
                         {'SpecialToken': {'id': bos, 'type_id': 1}}, {'Sequence': {'id': 'B', 'type_id': 1}}],
                'special_tokens': {bos: {'id': bos, 'ids': [bos_id], 'tokens': [bos]}}}
    else:
        post = {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': False, 'use_regex': True}
    tj = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': add, 'normalizer': normalizer,
          'pre_tokenizer': pre_tokenizer, 'post_processor': post, 'decoder': decoder, 'model': model}
    d = os.path.join(out, fam['name'])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
    cfg = {'add_bos_token': bool(fam.get('bos_post')), 'add_eos_token': False,
           'bos_token': {'content': bos, 'lstrip': False, 'normalized': False, 'rstrip': False,
                         'single_word': False, '__type': 'AddedToken'} if bos and fam.get('bos_post') else None,
           'eos_token': fam['eos'], 'clean_up_tokenization_spaces': False, 'model_max_length': 131072,
           'tokenizer_class': 'PreTrainedTokenizerFast'}
    tmpl = None
    if fam.get('template'):
        with open(os.path.join(models, 'templates', fam['template']), encoding='utf-8') as f:
            tmpl = f.read()
        where = fam.get('template_in', 'string')
        if where == 'string':
            cfg['chat_template'] = tmpl
        elif where == 'list':
            cfg['chat_template'] = [{'name': 'tool_use', 'template': '{{ "not this one" }}'},
                                    {'name': 'default', 'template': tmpl}]
        else:
            with open(os.path.join(d, 'chat_template.jinja'), 'w', encoding='utf-8') as f:
                f.write(tmpl)
    with open(os.path.join(d, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
    ids = {t: i for i, t in enumerate(tokens)}
    gen_eos = [ids[t] for t in fam['gen_eos']]
    gen = {'bos_token_id': bos_id, 'eos_token_id': gen_eos[0] if len(gen_eos) == 1 else gen_eos,
           'do_sample': True, 'temperature': 0.6, 'top_p': 0.9, 'transformers_version': '4.45.0'}
    with open(os.path.join(d, 'generation_config.json'), 'w', encoding='utf-8') as f:
        json.dump(gen, f, indent=2)
    eog = sorted(set(gen_eos) | {ids[fam['eos']]})
    meta = {'gguf': 'ggml-vocab-%s.gguf' % fam['vocab'], 'pre': fam['pre'], 'template': fam.get('template'),
            'chat': fam.get('chat'), 'bos': bos_id if fam.get('bos_post') else (bos_id if bos_id is not None else -1),
            'eos': ids[fam['eos']], 'eog': eog, 'add_bos': bool(fam.get('bos_post')),
            # HF's Metaspace places the space prefix unlike SentencePiece / llama.cpp (not before text
            # that starts with a space; "first": not after special tokens), so ids differ there
            'gguf_same_ids': not fam.get('metaspace')}
    with open(os.path.join(d, 'family.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2)
    return d


def strings(models):
    """llama.cpp's own tokenizer test strings (llama-bpe and llama-spm .inp) plus EXTRA."""
    out = []
    for name in ('llama-bpe', 'llama-spm'):
        raw = open(os.path.join(models, 'ggml-vocab-%s.gguf.inp' % name), 'rb').read().decode('utf-8')
        for t in raw.split(SEP):
            if t and t not in out:
                out.append(t)
    for t in EXTRA:
        if t not in out:
            out.append(t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--ref', required=True)
    ap.add_argument('--write', action='store_true')
    a = ap.parse_args()
    from tokenizers import Tokenizer
    import tokenizers

    if a.write:
        texts = strings(a.models)
        ref = {'about': 'Hugging Face tokenizers ids on tokenizer.json files made from llama.cpp vocab GGUFs; '
                        'see tests/ref/gen-hf-tok.py', 'tokenizers_version': tokenizers.__version__,
               'texts': texts, 'families': {}}
    else:
        with open(a.ref, encoding='utf-8') as f:
            ref = json.load(f)
        texts = ref['texts']
    bad = 0
    for fam in FAMILIES:
        d = make_family(a.models, fam, a.out)
        tk = Tokenizer.from_file(os.path.join(d, 'tokenizer.json'))
        ids = [tk.encode(t, add_special_tokens=False).ids for t in texts]
        ids_bos = [tk.encode(t, add_special_tokens=True).ids for t in texts[:8]]
        dec = [tk.decode(i, skip_special_tokens=False) == t for i, t in zip(ids, texts)]
        if a.write:
            ref['families'][fam['name']] = {'ids': ids, 'ids_add_special': ids_bos,
                                            'hf_round_trip': dec}
        else:
            want = ref['families'][fam['name']]
            for k, got in (('ids', ids), ('ids_add_special', ids_bos)):
                for t, g, w in zip(texts, got, want[k]):
                    if g != w:
                        print('gen-hf-tok: %s %s %r: tokenizers %s now gives %s, the reference has %s'
                              % (fam['name'], k, t[:40], tokenizers.__version__, g[:16], w[:16]), file=sys.stderr)
                        bad += 1
                        break
    if a.write:
        with open(a.ref, 'w', encoding='utf-8') as f:
            json.dump(ref, f, ensure_ascii=False, separators=(',', ':'))
            f.write('\n')
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()

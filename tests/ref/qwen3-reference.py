#!/usr/bin/env python3
"""qwen3-reference.py: reference outputs of the Hugging Face `transformers` Qwen3 implementation
for the tiny synthetic qwen3 GGUF file that tests/unit/test_qwen3.c writes and runs.

Why this shape: `make test` must not need torch. The test writes the file itself with the
library's deterministic writer (`spk-synth --preset qwen3-tiny --seed 1`, byte-identical for
equal parameters); this script, run once by tests/ref/qwen3-reference.sh, reads that same file,
puts its weights into `transformers.Qwen3ForCausalLM` (built from a Qwen3Config with
`from_config`, run in float64), and writes tests/data/ref_qwen3.json:

  file_fnv1a64      FNV-1a 64 of the GGUF file the references belong to (the test checks that
                    its file has the same hash, i.e. the writer did not change, before comparing)
  sequences         per sequence: "tokens", and for every position the top-8 [id, logprob] of
                    transformers' next-token distribution and "next_lp" (logprob of the next
                    token; null at the end), plus "greedy": 12 argmax continuation tokens
  converter         what llama.cpp's convert_hf_to_gguf.py wrote for the same model (saved with
                    save_pretrained): "tensors_equal" (names, shapes, F32 values identical to the
                    synthetic file's), the qwen3 keys it wrote, when the llama.cpp sources exist
  llamacpp          llama.cpp's own logprobs on the converted file (same layout as above),
                    when its python binding from tests/ref/build-llamacpp.sh is importable
  llamacpp_q8_0     the same on the converter's Q8_0 file (--outtype q8_0); "converter"."q8_0"
                    counts its blocks that differ from our writer's Q8_0 file (--gguf-q8)

Usage: python3 qwen3-reference.py --gguf FILE --out tests/data/ref_qwen3.json
                                  [--llamacpp-src DIR] [--work DIR]
Needs torch and transformers (CPU); numpy only for the converter step.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

N_TOP = 8
N_GREEDY = 12


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_gguf(path):
    """Minimal GGUF v3 reader: metadata (scalars, strings, arrays) and F32 tensors as lists."""
    buf = open(path, 'rb').read()
    off = [0]

    def rd(fmt):
        v = struct.unpack_from('<' + fmt, buf, off[0])
        off[0] += struct.calcsize('<' + fmt)
        return v[0]

    def rstr():
        n = rd('Q')
        s = buf[off[0]:off[0] + n].decode('utf-8', 'replace')
        off[0] += n
        return s
    scal = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}

    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            et, n = rd('I'), rd('Q')
            return [rval(et) for _ in range(n)]
        return rd(scal[t])
    assert buf[:4] == b'GGUF' and rd.__call__ and struct.unpack_from('<I', buf, 4)[0] == 3
    off[0] = 8
    n_t, n_kv = rd('Q'), rd('Q')
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        kv[k] = rval(rd('I'))
    infos = []
    for _ in range(n_t):
        name = rstr()
        nd = rd('I')
        ne = [rd('Q') for _ in range(nd)]
        infos.append((name, ne, rd('I'), rd('Q')))
    align = kv.get('general.alignment', 32)
    data0 = (off[0] + align - 1) // align * align
    tensors = {}
    for name, ne, ty, o in infos:
        n = 1
        for x in ne:
            n *= x
        if ty == 0:
            vals = struct.unpack_from('<%df' % n, buf, data0 + o)
            raw = buf[data0 + o:data0 + o + 4 * n]
        else:
            vals = None  # values of F32 tensors only; Q8_0 (type 8) as raw blocks
            raw = buf[data0 + o:data0 + o + n // 32 * 34] if ty == 8 else None
        tensors[name] = (ne, ty, vals, raw)
    return kv, tensors, buf


def ref_sequences(n_vocab):
    """Three deterministic token sequences (splitmix64 of a fixed seed)."""
    s = [0x51E7]

    def nxt():
        s[0] = (s[0] + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = s[0]
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)
    return [[nxt() % n_vocab for _ in range(n)] for n in (24, 17, 32)]


def build_model(kv, tensors):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    a = kv['general.architecture']
    assert a == 'qwen3', a
    E = kv['qwen3.embedding_length']
    V = tensors['token_embd.weight'][0][1]
    cfg = Qwen3Config(vocab_size=V, hidden_size=E, intermediate_size=kv['qwen3.feed_forward_length'],
                      num_hidden_layers=kv['qwen3.block_count'],
                      num_attention_heads=kv['qwen3.attention.head_count'],
                      num_key_value_heads=kv['qwen3.attention.head_count_kv'],
                      head_dim=kv['qwen3.attention.key_length'],
                      max_position_embeddings=kv['qwen3.context_length'],
                      rope_theta=kv['qwen3.rope.freq_base'],
                      rms_norm_eps=kv['qwen3.attention.layer_norm_rms_epsilon'],
                      tie_word_embeddings='output.weight' not in tensors,
                      attention_bias=False, use_sliding_window=False, torch_dtype='float64')
    cfg._attn_implementation = 'eager'
    model = Qwen3ForCausalLM._from_config(cfg, torch_dtype=torch.float64) \
        if hasattr(Qwen3ForCausalLM, '_from_config') else Qwen3ForCausalLM(cfg)
    model = model.double().eval()

    def T(name):
        ne, ty, vals, _ = tensors[name]
        t = torch.tensor(vals, dtype=torch.float64)
        return t.reshape(list(reversed(ne))) if len(ne) > 1 else t
    sd = {'model.embed_tokens.weight': T('token_embd.weight'), 'model.norm.weight': T('output_norm.weight')}
    if 'output.weight' in tensors:
        sd['lm_head.weight'] = T('output.weight')
    for l in range(cfg.num_hidden_layers):
        p, q = 'blk.%d.' % l, 'model.layers.%d.' % l
        for g, h in [('attn_norm', 'input_layernorm'), ('ffn_norm', 'post_attention_layernorm'),
                     ('attn_q', 'self_attn.q_proj'), ('attn_k', 'self_attn.k_proj'),
                     ('attn_v', 'self_attn.v_proj'), ('attn_output', 'self_attn.o_proj'),
                     ('attn_q_norm', 'self_attn.q_norm'), ('attn_k_norm', 'self_attn.k_norm'),
                     ('ffn_gate', 'mlp.gate_proj'), ('ffn_up', 'mlp.up_proj'), ('ffn_down', 'mlp.down_proj')]:
            sd[q + h + '.weight'] = T(p + g + '.weight')
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != 'lm_head.weight' and 'rotary' not in m]
    assert not missing and not unexpected, (missing, unexpected)
    if 'output.weight' not in tensors:
        model.tie_weights()
    return cfg, model


def logprob_entries(lp_rows, toks):
    """[n][V] float64 log-probabilities -> the JSON positions list."""
    out = []
    for i, row in enumerate(lp_rows):
        order = sorted(range(len(row)), key=lambda v: -row[v])[:N_TOP]
        out.append({'top': [[v, round(row[v], 6)] for v in order],
                    'next_lp': round(row[toks[i + 1]], 6) if i + 1 < len(toks) else None})
    return out


def transformers_refs(model, seqs):
    import torch
    res = []
    with torch.no_grad():
        for toks in seqs:
            ids = torch.tensor([toks])
            lp = torch.log_softmax(model(ids).logits[0].double(), dim=-1).tolist()
            g = list(toks)
            for _ in range(N_GREEDY):
                nxt = int(model(torch.tensor([g])).logits[0, -1].argmax())
                g.append(nxt)
            res.append({'tokens': toks, 'positions': logprob_entries(lp, toks), 'greedy': g[len(toks):]})
    return res


def convert_with_llamacpp(model, cfg, kv, tensors, src, work, gguf_path, q8_path=None):
    """save_pretrained, then llama.cpp's convert_hf_to_gguf.py (F32); compare the tensors."""
    import torch
    hf = os.path.join(work, 'hf')
    model.to(torch.float32).save_pretrained(hf, safe_serialization=True)
    model.double()
    # A tokenizer for the converter: the synthetic file's byte-level BPE vocabulary as a
    # tokenizer.json (the converter reads it through AutoTokenizer). Its pre-tokenizer hash is not
    # one llama.cpp knows, so the wrapper below names it 'qwen2' (the vocabulary is not what this
    # compares; tests/unit/test_tokenizer* check tokenizers against llama.cpp).
    toks = kv['tokenizer.ggml.tokens']
    merges = kv.get('tokenizer.ggml.merges', [])
    tj = {'version': '1.0', 'added_tokens': [{'id': i, 'content': toks[i], 'special': True, 'single_word': False,
                                              'lstrip': False, 'rstrip': False, 'normalized': False}
                                             for i in range(256, 259)],
          'normalizer': None, 'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                                'use_regex': True},
          'post_processor': None, 'decoder': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                                        'use_regex': True},
          'model': {'type': 'BPE', 'vocab': {t: i for i, t in enumerate(toks)}, 'merges': merges,
                    'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                    'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False}}
    json.dump(tj, open(os.path.join(hf, 'tokenizer.json'), 'w'))
    json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': toks[258], 'bos_token': None,
               'model_max_length': cfg.max_position_embeddings},
              open(os.path.join(hf, 'tokenizer_config.json'), 'w'))
    out = os.path.join(work, 'converted-f32.gguf')
    wrapper = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
               "import convert_hf_to_gguf as c\nimport conversion.base as cb\n"
               "cb.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
               "sys.argv = ['convert_hf_to_gguf.py', %r, '--outtype', 'f32', '--outfile', %r]\n"
               "c.main()\n") % (os.path.join(src, 'gguf-py'), src, hf, out)
    subprocess.run([sys.executable, '-c', wrapper], check=True)
    ckv, ct, _ = read_gguf(out)
    diffs = []
    for name, (ne, ty, vals, _) in tensors.items():
        if name not in ct:
            diffs.append('missing ' + name)
            continue
        cne, cty, cvals, _ = ct[name]
        if cne != ne or cty != ty or cvals != vals:
            diffs.append('%s: shape %s type %d vs %s %d%s' % (name, cne, cty, ne, ty,
                                                              '' if cvals == vals else ', values differ'))
    extra = sorted(set(ct) - set(tensors))
    keys = {k: ckv[k] for k in sorted(ckv) if k.startswith('qwen3.')}
    out_q8 = None
    if q8_path:
        # the converter's Q8_0 of the same model against our writer's Q8_0 file, block by block
        out_q8 = os.path.join(work, 'converted-q8_0.gguf')
        subprocess.run([sys.executable, '-c', wrapper.replace("'f32'", "'q8_0'").replace(out, out_q8)], check=True)
        _, ours, _ = read_gguf(q8_path)
        _, theirs, _ = read_gguf(out_q8)
        nb = nd = 0
        types_differ = []
        for name, (ne, ty, _, raw) in ours.items():
            if name not in theirs or theirs[name][1] != ty:
                types_differ.append(name)
                continue
            if ty == 8:
                r2 = theirs[name][3]
                for b in range(0, len(raw), 34):
                    nb += 1
                    nd += raw[b:b + 34] != r2[b:b + 34]
        q8 = {'blocks': nb, 'blocks_differing': nd, 'tensors_not_both_q8_0': types_differ}
    return out, out_q8, {'q8_0': q8 if q8_path else None,'tensors_equal': not diffs and not extra, 'differences': diffs[:20], 'extra_tensors': extra,
                 'qwen3_keys': keys, 'general.architecture': ckv.get('general.architecture')}


def llamacpp_refs(path, seqs):
    import llama_cpp
    import numpy as np
    res = []
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=64, n_threads=2, logits_all=True, verbose=False)
    for toks in seqs:
        llm.reset()
        llm.eval(toks)
        lg = np.array(llm.scores[:len(toks)], dtype=np.float64)
        lp = lg - lg.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        g = list(toks)
        for _ in range(N_GREEDY):
            llm.reset()
            llm.eval(g)
            g.append(int(np.argmax(llm.scores[len(g) - 1])))
        res.append({'tokens': toks, 'positions': logprob_entries(lp.tolist(), toks), 'greedy': g[len(toks):]})
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--gguf', required=True)
    ap.add_argument('--gguf-q8', default=None, help='the same model written by our writer with Q8_0 matrices')
    ap.add_argument('--out', required=True)
    ap.add_argument('--llamacpp-src', default=None)
    ap.add_argument('--work', default='/tmp/spk-qwen3-ref')
    ap.add_argument('--preset', default='qwen3-tiny')
    ap.add_argument('--seed', type=int, default=1)
    args = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    kv, tensors, raw = read_gguf(args.gguf)
    cfg, model = build_model(kv, tensors)
    seqs = ref_sequences(cfg.vocab_size)
    out = {'about': 'transformers Qwen3ForCausalLM (float64) on the weights of `spk-synth --preset %s --seed %d`; '
                    'regenerate with tests/ref/qwen3-reference.sh' % (args.preset, args.seed),
           'preset': args.preset, 'seed': args.seed, 'file_fnv1a64': '%016x' % fnv1a64(raw),
           'file_q8_0_fnv1a64': '%016x' % fnv1a64(open(args.gguf_q8, 'rb').read()) if args.gguf_q8 else None,
           'torch': torch.__version__, 'transformers': transformers.__version__,
           'sequences': transformers_refs(model, seqs)}
    if args.llamacpp_src and os.path.isdir(args.llamacpp_src):
        os.makedirs(args.work, exist_ok=True)
        conv, conv_q8, out['converter'] = convert_with_llamacpp(model, cfg, kv, tensors, args.llamacpp_src,
                                                                args.work, args.gguf, args.gguf_q8)
        try:
            out['llamacpp'] = llamacpp_refs(conv, seqs)
            if conv_q8:
                out['llamacpp_q8_0'] = llamacpp_refs(conv_q8, seqs)
        except ImportError as e:
            print('qwen3-reference: no llama.cpp binding (%s): llamacpp section left out' % e, file=sys.stderr)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=None, separators=(',', ':'))
        f.write('\n')
    print('wrote', args.out, file=sys.stderr)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""hf-reference.py: transformers' outputs for the tiny Hugging Face checkpoints of hf_tiny.py,
written to tests/data/ref_hf.json for tests/unit/test_hf.c (which needs no torch: it writes the
same directories with hf_tiny.py, checks their FNV-1a hash against the one recorded here, loads
them and compares).

Per variant: "fnv1a64" of its safetensors files, and "sequences": per sequence the tokens, for
every position the top-8 [id, logprob] of the next-token distribution, and 10 greedy tokens.
Float variants are loaded with AutoModelForCausalLM.from_pretrained (transformers' own
safetensors, sharding and rope_scaling handling); quantized ones (FP8, NVFP4, MXFP4) are the same
architecture from the config with the dequantized weights hf_tiny.py computes (exactly the
values the C loader produces: BF16 for FP8/NVFP4, float for MXFP4). Run in float64.

MoE variants: Qwen3-MoE's per-expert tensors go through from_pretrained (transformers stacks them);
gpt-oss float variants through from_pretrained, gpt-oss MXFP4 on the dequantized experts in
transformers' own [E, in, out] layout.

Usage: hf-reference.py --out tests/data/ref_hf.json [--work DIR] [VARIANT...]   (needs torch,
transformers; with variants named, only those are recomputed and the others kept from --out)
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_tiny  # noqa: E402

N_TOP = 8
N_GREEDY = 10


def ref_sequences(n_vocab):
    s = [0x4846]

    def nxt():
        s[0] = (s[0] + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = s[0]
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)
    return [[nxt() % n_vocab for _ in range(n)] for n in (20, 13, 28)]


def load_model(d, cfg, deq, quantized):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if not quantized:
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation='eager',
                                                 experts_implementation='eager')  # grouped_mm takes no float64
        return m.double().eval()
    c = dict(cfg)
    c.pop('quantization_config')
    if c['architectures'][0] == 'Qwen3MoeForCausalLM':
        # per-expert names: through from_pretrained (which stacks them) from the dequantized
        # values written as F32
        q = os.path.join(d + '-dequantized')
        os.makedirs(q, exist_ok=True)
        c['torch_dtype'] = 'float32'
        with open(os.path.join(q, 'config.json'), 'w') as f:
            json.dump(c, f)
        hf_tiny.write_safetensors(os.path.join(q, 'model.safetensors'), [
            (k, 'F32', hf_tiny.shape(v), hf_tiny.pack('F32', hf_tiny.flat(v))) for k, v in deq.items()])
        return load_model(q, c, deq, False)
    c['torch_dtype'] = 'float32'
    conf = AutoConfig.for_model(**c)
    conf._attn_implementation = 'eager'
    conf._experts_implementation = 'eager'
    m = AutoModelForCausalLM.from_config(conf).double().eval()
    sd = {k: torch.tensor(v, dtype=torch.float64) for k, v in deq.items()}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [x for x in missing if x != 'lm_head.weight' and 'rotary' not in x]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.get('tie_word_embeddings'):
        m.tie_weights()
    return m


def refs(model, seqs):
    import torch
    res = []
    with torch.no_grad():
        for toks in seqs:
            lp = torch.log_softmax(model(torch.tensor([toks])).logits[0].double(), dim=-1).tolist()
            pos = []
            for row in lp:
                order = sorted(range(len(row)), key=lambda v: -row[v])[:N_TOP]
                pos.append({'top': [[v, round(row[v], 6)] for v in order]})
            g = list(toks)
            for _ in range(N_GREEDY):
                g.append(int(model(torch.tensor([g])).logits[0, -1].argmax()))
            res.append({'tokens': toks, 'positions': pos, 'greedy': g[len(toks):]})
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    ap.add_argument('--work')
    ap.add_argument('only', nargs='*')
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix='spk-hf-ref.')
    out = {'generator': 'tests/ref/hf-reference.sh', 'variants': {}}
    if a.only and os.path.exists(a.out):
        with open(a.out) as f:
            out = json.load(f)
    import transformers
    import torch
    out['versions'] = {'transformers': transformers.__version__, 'torch': torch.__version__}
    for v in a.only or hf_tiny.VARIANTS:
        cfg, deq, h = hf_tiny.write_variant(work, v)
        m = load_model(os.path.join(work, v), cfg, deq, 'quantization_config' in cfg)
        out['variants'][v] = {'fnv1a64': h, 'sequences': refs(m, ref_sequences(cfg['vocab_size']))}
        print(v, h, file=sys.stderr)
    with open(a.out, 'w') as f:
        json.dump(out, f, separators=(',', ':'))
        f.write('\n')


if __name__ == '__main__':
    main()

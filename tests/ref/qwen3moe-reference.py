#!/usr/bin/env python3
"""qwen3moe-reference.py: reference outputs of the Hugging Face `transformers` Qwen3-MoE
implementation (Qwen3MoeForCausalLM, float64) for the tiny synthetic qwen3moe GGUF file that
tests/unit/test_qwen3moe.c writes (`spk-synth --preset qwen3moe-tiny --seed 1`: 3 layers, 8 experts
of 64 columns, 2 per token, decoder_sparse_step 1, no shared expert, norm_topk_prob true).

The same design and JSON layout as qwen3-reference.py (whose helpers this imports): the test
writes the file itself with the deterministic writer, checks the recorded FNV-1a hash, then
compares log-probs and greedy continuations. Weights map as
  blk.N.ffn_gate_inp            -> model.layers.N.mlp.gate.weight          [n_expert][n_embd]
  blk.N.ffn_gate_exps, _up_exps -> model.layers.N.mlp.experts.gate_up_proj [n_expert][2 n_ff][n_embd]
  blk.N.ffn_down_exps           -> model.layers.N.mlp.experts.down_proj    [n_expert][n_embd][n_ff]
(transformers 5's stacked expert parameters). With --llamacpp-src, llama.cpp's converter is run on
the save_pretrained checkpoint and llama.cpp's log-probs recorded, as for qwen3 (best effort: a
failure is recorded in the JSON, not fatal).
"""
import argparse
import importlib.util
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('qwen3ref', os.path.join(here, 'qwen3-reference.py'))
q3 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(q3)


def build_model(kv, tensors):
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    a = kv['general.architecture']
    assert a == 'qwen3moe', a
    k = lambda s: kv['qwen3moe.' + s]
    V = tensors['token_embd.weight'][0][1]
    cfg = Qwen3MoeConfig(vocab_size=V, hidden_size=k('embedding_length'),
                         intermediate_size=k('feed_forward_length'),
                         moe_intermediate_size=k('expert_feed_forward_length'),
                         num_experts=k('expert_count'), num_experts_per_tok=k('expert_used_count'),
                         norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                         num_hidden_layers=k('block_count'), num_attention_heads=k('attention.head_count'),
                         num_key_value_heads=k('attention.head_count_kv'), head_dim=k('attention.key_length'),
                         max_position_embeddings=k('context_length'), rope_theta=k('rope.freq_base'),
                         rms_norm_eps=k('attention.layer_norm_rms_epsilon'),
                         tie_word_embeddings='output.weight' not in tensors, attention_bias=False,
                         use_sliding_window=False, output_router_logits=False, torch_dtype='float64')
    cfg._attn_implementation = 'eager'
    cfg._experts_implementation = 'eager'  # the per-expert loop (grouped_mm takes no float64)
    model = Qwen3MoeForCausalLM._from_config(cfg, torch_dtype=torch.float64) \
        if hasattr(Qwen3MoeForCausalLM, '_from_config') else Qwen3MoeForCausalLM(cfg)
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
                     ('ffn_gate_inp', 'mlp.gate')]:
            sd[q + h + '.weight'] = T(p + g + '.weight')
        sd[q + 'mlp.experts.gate_up_proj'] = torch.cat([T(p + 'ffn_gate_exps.weight'), T(p + 'ffn_up_exps.weight')], 1)
        sd[q + 'mlp.experts.down_proj'] = T(p + 'ffn_down_exps.weight')
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != 'lm_head.weight' and 'rotary' not in m]
    assert not missing and not unexpected, (missing, unexpected)
    if 'output.weight' not in tensors:
        model.tie_weights()
    return cfg, model


def dequant_q8_0(path):
    """The tensors of our writer's Q8_0 file with Q8_0 blocks decoded to floats (F32 ones as they are)."""
    import struct
    kv, tensors, _ = q3.read_gguf(path)
    out = {}
    for name, (ne, ty, vals, raw) in tensors.items():
        if ty == 8:
            vals = []
            for b in range(0, len(raw), 34):
                d = struct.unpack_from('<e', raw, b)[0]
                vals.extend(d * q for q in struct.unpack_from('<32b', raw, b + 2))
            ty = 0
        out[name] = (ne, ty, vals, raw)
    return kv, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--gguf', required=True)
    ap.add_argument('--gguf-q8', default=None)
    ap.add_argument('--out', required=True)
    ap.add_argument('--llamacpp-src', default=None)
    ap.add_argument('--work', default='/tmp/spk-qwen3moe-ref')
    ap.add_argument('--preset', default='qwen3moe-tiny')
    ap.add_argument('--seed', type=int, default=1)
    args = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    kv, tensors, raw = q3.read_gguf(args.gguf)
    cfg, model = build_model(kv, tensors)
    seqs = q3.ref_sequences(cfg.vocab_size)
    out = {'about': 'transformers Qwen3MoeForCausalLM (float64) on the weights of `spk-synth --preset %s --seed %d`; '
                    'regenerate with tests/ref/qwen3moe-reference.sh' % (args.preset, args.seed),
           'preset': args.preset, 'seed': args.seed, 'file_fnv1a64': '%016x' % q3.fnv1a64(raw),
           'file_q8_0_fnv1a64': '%016x' % q3.fnv1a64(open(args.gguf_q8, 'rb').read()) if args.gguf_q8 else None,
           'torch': torch.__version__, 'transformers': transformers.__version__,
           'sequences': q3.transformers_refs(model, seqs)}
    if args.gguf_q8:
        # the same model on the Q8_0 file's weights (decoded): what is left against our Q8_0 run is
        # the 8-bit rounding of the activations (and the expert choices it can flip)
        kv8, t8 = dequant_q8_0(args.gguf_q8)
        _, model8 = build_model(kv8, t8)
        out['sequences_q8_0_weights'] = q3.transformers_refs(model8, seqs)
    if args.llamacpp_src and os.path.isdir(args.llamacpp_src):
        os.makedirs(args.work, exist_ok=True)
        try:
            conv, conv_q8, out['converter'] = q3.convert_with_llamacpp(model, cfg, kv, tensors, args.llamacpp_src,
                                                                       args.work, args.gguf, args.gguf_q8)
            out['llamacpp'] = q3.llamacpp_refs(conv, seqs)
            if conv_q8:
                out['llamacpp_q8_0'] = q3.llamacpp_refs(conv_q8, seqs)
        except Exception as e:  # recorded, not fatal: the transformers reference is the one the test needs
            print('qwen3moe-reference: llama.cpp step failed: %r' % e, file=sys.stderr)
            out['llamacpp_error'] = repr(e)[:300]
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=None, separators=(',', ':'))
        f.write('\n')
    print('wrote', args.out, file=sys.stderr)


if __name__ == '__main__':
    main()

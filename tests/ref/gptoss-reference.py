#!/usr/bin/env python3
"""gptoss-reference.py: reference outputs of the Hugging Face `transformers` gpt-oss implementation
(GptOssForCausalLM, float64, eager attention) for the tiny synthetic gpt-oss GGUF file that
tests/unit/test_gptoss.c writes (`spk-synth --preset gpt-oss-tiny --seed 1`: 4 layers, 8 heads of 32
over 4 KV heads, 8 experts of 64 columns, 2 per token, sliding window 4 on the even layers, YaRN
factor 32 over an original context of 4096 with beta 32/1 and truncate false as gpt-oss-20b's
config.json, swiglu limit 7.0 and alpha 1.702 (GptOssConfig's defaults)).

The same design and JSON layout as qwen3-reference.py / qwen3moe-reference.py (whose helpers this
imports). Weights map as
  blk.N.attn_norm / post_attention_norm -> input_layernorm / post_attention_layernorm
  blk.N.attn_{q,k,v,output}.{weight,bias} -> self_attn.{q,k,v,o}_proj.{weight,bias}
  blk.N.attn_sinks.weight             -> self_attn.sinks                     [n_heads]
  blk.N.ffn_gate_inp.{weight,bias}    -> mlp.router.{weight,bias}
  blk.N.ffn_{gate,up}_exps.weight     -> mlp.experts.gate_up_proj [n_expert][n_embd][2 n_ff],
                                         gate in the even columns, up in the odd (transposed)
  blk.N.ffn_{gate,up}_exps.bias       -> mlp.experts.gate_up_proj_bias (interleaved the same way)
  blk.N.ffn_down_exps.{weight,bias}   -> mlp.experts.down_proj [n_expert][n_ff][n_embd] (transposed),
                                         down_proj_bias
which is the inverse of llama.cpp's GptOssModel converter (conversion/gpt_oss.py). The YaRN
frequencies of transformers' _compute_yarn_parameters are also recorded ('yarn_inv_freq',
'yarn_attention_factor') for the test to compare ours with.
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
    from transformers import GptOssConfig, GptOssForCausalLM
    a = kv['general.architecture']
    assert a == 'gpt-oss', a
    k = lambda s: kv['gpt-oss.' + s]
    V = tensors['token_embd.weight'][0][1]
    rope = {'rope_type': 'yarn', 'rope_theta': k('rope.freq_base'), 'factor': k('rope.scaling.factor'),
            'beta_fast': k('rope.scaling.yarn_beta_fast'), 'beta_slow': k('rope.scaling.yarn_beta_slow'),
            'truncate': False, 'original_max_position_embeddings': k('rope.scaling.original_context_length')}
    cfg = GptOssConfig(vocab_size=V, hidden_size=k('embedding_length'),
                       intermediate_size=k('expert_feed_forward_length'),
                       num_local_experts=k('expert_count'), num_experts_per_tok=k('expert_used_count'),
                       num_hidden_layers=k('block_count'), num_attention_heads=k('attention.head_count'),
                       num_key_value_heads=k('attention.head_count_kv'), head_dim=k('attention.key_length'),
                       max_position_embeddings=k('context_length'), rope_parameters=rope,
                       sliding_window=k('attention.sliding_window'),
                       rms_norm_eps=k('attention.layer_norm_rms_epsilon'), tie_word_embeddings=False,
                       attention_bias=True, output_router_logits=False)
    cfg._attn_implementation = 'eager'
    cfg._experts_implementation = 'eager'
    model = GptOssForCausalLM._from_config(cfg, torch_dtype=torch.float64) \
        if hasattr(GptOssForCausalLM, '_from_config') else GptOssForCausalLM(cfg)
    model = model.double().eval()

    def T(name):
        ne, ty, vals, _ = tensors[name]
        t = torch.tensor(vals, dtype=torch.float64)
        return t.reshape(list(reversed(ne))) if len(ne) > 1 else t
    sd = {'model.embed_tokens.weight': T('token_embd.weight'), 'model.norm.weight': T('output_norm.weight'),
          'lm_head.weight': T('output.weight')}
    for l in range(cfg.num_hidden_layers):
        p, q = 'blk.%d.' % l, 'model.layers.%d.' % l
        for g, h in [('attn_norm.weight', 'input_layernorm.weight'),
                     ('post_attention_norm.weight', 'post_attention_layernorm.weight'),
                     ('attn_sinks.weight', 'self_attn.sinks'),
                     ('ffn_gate_inp.weight', 'mlp.router.weight'), ('ffn_gate_inp.bias', 'mlp.router.bias')]:
            sd[q + h] = T(p + g)
        for g, h in [('attn_q', 'q_proj'), ('attn_k', 'k_proj'), ('attn_v', 'v_proj'), ('attn_output', 'o_proj')]:
            sd[q + 'self_attn.%s.weight' % h] = T(p + g + '.weight')
            sd[q + 'self_attn.%s.bias' % h] = T(p + g + '.bias')
        gate, up = T(p + 'ffn_gate_exps.weight'), T(p + 'ffn_up_exps.weight')  # [X][F][E]
        X, F, E = gate.shape
        gu = torch.empty(X, E, 2 * F, dtype=torch.float64)
        gu[:, :, 0::2] = gate.transpose(1, 2)
        gu[:, :, 1::2] = up.transpose(1, 2)
        gub = torch.empty(X, 2 * F, dtype=torch.float64)
        gub[:, 0::2] = T(p + 'ffn_gate_exps.bias')
        gub[:, 1::2] = T(p + 'ffn_up_exps.bias')
        sd[q + 'mlp.experts.gate_up_proj'] = gu
        sd[q + 'mlp.experts.gate_up_proj_bias'] = gub
        sd[q + 'mlp.experts.down_proj'] = T(p + 'ffn_down_exps.weight').transpose(1, 2).contiguous()
        sd[q + 'mlp.experts.down_proj_bias'] = T(p + 'ffn_down_exps.bias')
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if 'rotary' not in m]
    assert not missing and not unexpected, (missing, unexpected)
    return cfg, model


def router_margins(model, seqs):
    """Per sequence: the smallest gap, over prompt positions and layers, between the k-th and the
    (k+1)-th router logit. A gap this small can flip an expert choice under float rounding (seed 1
    had 0.00075 in layer 2, which our f16 KV cache flipped: a 0.6 log-prob jump at one position)."""
    import torch
    caps = {}
    hooks = [layer.mlp.router.register_forward_hook(
        lambda mod, inp, out, l=l: caps.__setitem__(l, torch.nn.functional.linear(inp[0], mod.weight, mod.bias)))
        for l, layer in enumerate(model.model.layers)]
    k = model.config.num_experts_per_tok
    res = []
    with torch.no_grad():
        for toks in seqs:
            model(torch.tensor([toks]))
            res.append(min(float((lambda s: (s[:, k - 1] - s[:, k]).min())(
                c.reshape(-1, c.shape[-1]).sort(-1, descending=True).values)) for c in caps.values()))
    for h in hooks:
        h.remove()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--gguf', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--preset', default='gpt-oss-tiny')
    ap.add_argument('--llamacpp-src', default=None)
    ap.add_argument('--work', default='/tmp/spk-gptoss-ref')
    ap.add_argument('--seed', type=int, default=2)
    args = ap.parse_args()
    import torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    torch.manual_seed(0)
    kv, tensors, raw = q3.read_gguf(args.gguf)
    cfg, model = build_model(kv, tensors)
    inv_freq, attn_factor = ROPE_INIT_FUNCTIONS['yarn'](cfg, 'cpu')
    seqs = q3.ref_sequences(cfg.vocab_size)
    out = {'about': 'transformers GptOssForCausalLM (float64, eager) on the weights of `spk-synth --preset %s '
                    '--seed %d`; regenerate with tests/ref/gptoss-reference.sh' % (args.preset, args.seed),
           'preset': args.preset, 'seed': args.seed, 'file_fnv1a64': '%016x' % q3.fnv1a64(raw),
           'torch': torch.__version__, 'transformers': transformers.__version__,
           'layer_types': list(cfg.layer_types),
           'yarn_inv_freq': [float(x) for x in inv_freq.tolist()], 'yarn_attention_factor': float(attn_factor),
           'sequences': q3.transformers_refs(model, seqs),
           'min_router_margin': router_margins(model, seqs)}
    if args.llamacpp_src and os.path.isdir(args.llamacpp_src):
        # llama.cpp's converter on the save_pretrained checkpoint (F32 experts: the non-MXFP4 path of
        # conversion/gpt_oss.py) and llama.cpp's log-probs; best effort, a failure is recorded
        os.makedirs(args.work, exist_ok=True)
        try:
            conv, _, out['converter'] = q3.convert_with_llamacpp(model, cfg, kv, tensors, args.llamacpp_src,
                                                                 args.work, args.gguf)
            ckv, _, _ = q3.read_gguf(conv)
            out['converter']['gpt_oss_keys'] = {k: v for k, v in ckv.items() if k.startswith('gpt-oss.')}
            out['llamacpp'] = q3.llamacpp_refs(conv, seqs)
        except Exception as e:
            print('gptoss-reference: llama.cpp step failed: %r' % e, file=sys.stderr)
            out['llamacpp_error'] = repr(e)[:300]
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=None, separators=(',', ':'))
        f.write('\n')
    print('wrote', args.out, file=sys.stderr)


if __name__ == '__main__':
    main()

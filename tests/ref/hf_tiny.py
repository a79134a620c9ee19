#!/usr/bin/env python3
"""hf_tiny.py: tiny random-weight Hugging Face checkpoints (config.json + safetensors), written
with the standard library only, byte-identical on every run (random.Random with fixed seeds).

tests/unit/test_hf.c runs `python3 tests/ref/hf_tiny.py OUTDIR` and loads the directories;
tests/ref/hf-reference.py imports this module to put the same weights (dequantized, for the
quantized variants) into transformers and records tests/data/ref_hf.json.

Variants (subdirectories of OUTDIR):
  llama-f32          LlamaForCausalLM, GQA (4 heads, 2 kv heads), untied lm_head, F32
  llama-bf16         the same weights rounded to BF16 (save_pretrained's BF16 layout)
  llama-fp8-tensor   projections FP8 E4M3 with one F32 scale per tensor ("weight_scale", compressed-tensors)
  llama-fp8-channel  projections FP8 E4M3, F32 scale per output row [rows, 1] (fbgemm / compressed-tensors)
  llama-fp8-block    projections FP8 E4M3, BF16 "weight_scale_inv" per 32x32 block (the block size
                     comes from quantization_config.weight_block_size; published checkpoints use 128)
  llama-nvfp4        projections NVFP4 (ModelOpt): packed E2M1, E4M3 scale per 16, F32 weight_scale_2
  llama-nvfp4-ct     the same as compressed-tensors writes it (nvfp4-pack-quantized): weight_packed,
                     weight_scale, weight_global_scale (the reciprocal of weight_scale_2), input_global_scale
  llama-fp8-block128 hidden 192, intermediate 320: FP8 with 128x128 block scales (whole and partial
                     blocks), the published block size
  llama-mxfp4        projections MXFP4 (gpt-oss layout): *_blocks [rows, cols/32, 16] + *_scales (E8M0 bytes)
  llama3-hd          Llama with head_dim 32 != hidden/heads (Mistral-shaped), rope_scaling llama3,
                     tied embeddings, BF16, two shards with model.safetensors.index.json
  qwen3-f32          Qwen3ForCausalLM (q/k norms, head_dim 32, tied embeddings), F32
  qwen3moe-f32       Qwen3MoeForCausalLM, 8 experts (top 2, norm_topk_prob), per-expert
                     mlp.experts.N.{gate,up,down}_proj as published, F32
  qwen3moe-bf16      the same weights in BF16, two shards (layer 1 in the second)
  qwen3moe-fp8-block attention and every expert FP8 with 32x32 block scales (as Qwen3-30B-A3B-FP8,
                     whose blocks are 128), the router and the rest BF16
  gptoss-f32         GptOssForCausalLM: q/k/v/o biases, sinks, router with bias, 4 experts (top 2) with the
                     fused interleaved gate_up_proj [E, hidden, 2F] + biases, sliding window 8 on even
                     layers, YaRN, F32
  gptoss-bf16        the same weights in BF16
  gptoss-mxfp4       experts MXFP4 as published (gate_up_proj_blocks [E, 2F, hidden/32, 16] + _scales,
                     down_proj_blocks [E, hidden, F/32, 16] + _scales), the rest BF16
Every directory also gets a byte-level BPE tokenizer.json / tokenizer_config.json.
Written only when named (malformed on purpose, for test_hf):
  gptoss-mxfp4-short layer 0's gate_up_proj_blocks cut to one block per row (config says two)

Usage: python3 hf_tiny.py OUTDIR      (prints "variant fnv1a64" lines)
"""
import bisect
import json
import math
import os
import random
import struct
import sys

VOCAB = 300
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
            rope_theta=10000.0, hidden_act='silu', initializer_range=0.02, attention_bias=False,
            mlp_bias=False, bos_token_id=None, eos_token_id=258, torch_dtype='float32')
PROJ = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
        'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def bf16_bits(x):
    b = struct.unpack('<I', struct.pack('<f', x))[0]
    if (b & 0x7fffffff) > 0x7f800000:
        return (b >> 16) | 0x40
    b += 0x7fff + ((b >> 16) & 1)
    return (b >> 16) & 0xffff


def bf16(x):
    return struct.unpack('<f', struct.pack('<I', bf16_bits(x) << 16))[0]


def e4m3_value(c):
    s, e, m = c >> 7, (c >> 3) & 15, c & 7
    if e == 15 and m == 7:
        return float('nan')
    v = (m / 8.0) * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
    return -v if s else v


E4M3_POS = sorted((e4m3_value(c), c) for c in range(127))  # 0 .. 448
E4M3_VALS = [v for v, _ in E4M3_POS]
E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]


def nearest(vals, x):
    """Index of the nearest value in sorted `vals` to |x|, ties to the even index, clamped."""
    a = abs(x)
    i = bisect.bisect_left(vals, a)
    if i == 0:
        return 0
    if i >= len(vals):
        return len(vals) - 1
    lo, hi = vals[i - 1], vals[i]
    if a - lo < hi - a:
        return i - 1
    if a - lo > hi - a:
        return i
    return i - 1 if (i - 1) % 2 == 0 else i


def e4m3_encode(x):
    c = E4M3_POS[nearest(E4M3_VALS, x)][1]
    return c | (0x80 if x < 0 and c else 0)


def e2m1_encode(x):
    c = nearest(E2M1, x)
    return c | (8 if x < 0 and c else 0)


class Rng:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def mat(self, rows, cols, scale):
        return [[f32((self.r.random() * 2 - 1) * scale) for _ in range(cols)] for _ in range(rows)]

    def vec(self, n):
        return [f32(1 + (self.r.random() * 2 - 1) * 0.2) for _ in range(n)]


def make_weights(cfg, seed):
    """{hf name: rows (list of lists), stacked matrices (list of those) or vector} in float32 values."""
    arch = cfg['architectures'][0]
    if arch in ('Qwen3MoeForCausalLM', 'GptOssForCausalLM'):
        return make_moe_weights(cfg, seed)
    rng = Rng(seed)
    E, F, V, L = cfg['hidden_size'], cfg['intermediate_size'], cfg['vocab_size'], cfg['num_hidden_layers']
    hd = cfg.get('head_dim') or E // cfg['num_attention_heads']
    Q, KV = cfg['num_attention_heads'] * hd, cfg['num_key_value_heads'] * hd
    w = {'model.embed_tokens.weight': rng.mat(V, E, 1.0)}
    for l in range(L):
        p = 'model.layers.%d.' % l
        w[p + 'input_layernorm.weight'] = rng.vec(E)
        w[p + 'post_attention_layernorm.weight'] = rng.vec(E)
        if cfg['architectures'][0] == 'Qwen3ForCausalLM':
            w[p + 'self_attn.q_norm.weight'] = rng.vec(hd)
            w[p + 'self_attn.k_norm.weight'] = rng.vec(hd)
        for name, (r, c) in [('self_attn.q_proj', (Q, E)), ('self_attn.k_proj', (KV, E)), ('self_attn.v_proj', (KV, E)),
                             ('self_attn.o_proj', (E, Q)), ('mlp.gate_proj', (F, E)), ('mlp.up_proj', (F, E)),
                             ('mlp.down_proj', (E, F))]:
            w[p + name + '.weight'] = rng.mat(r, c, 2.0 / math.sqrt(c))
    w['model.norm.weight'] = rng.vec(E)
    if not cfg.get('tie_word_embeddings'):
        w['lm_head.weight'] = rng.mat(V, E, 2.0 / math.sqrt(E))
    return w


def make_moe_weights(cfg, seed):
    """Qwen3-MoE (per-expert tensors, as published) and gpt-oss (stacked experts: gate_up_proj
    [E, hidden, 2F] with gate/up interleaved in its last dimension, down_proj [E, F, hidden])."""
    rng = Rng(seed)
    gpt = cfg['architectures'][0] == 'GptOssForCausalLM'
    H, V, L = cfg['hidden_size'], cfg['vocab_size'], cfg['num_hidden_layers']
    NE = cfg['num_local_experts'] if gpt else cfg['num_experts']
    F = cfg['intermediate_size'] if gpt else cfg['moe_intermediate_size']
    hd = cfg['head_dim']
    Q, KV = cfg['num_attention_heads'] * hd, cfg['num_key_value_heads'] * hd
    small = lambda n, s: [f32((rng.r.random() * 2 - 1) * s) for _ in range(n)]
    w = {'model.embed_tokens.weight': rng.mat(V, H, 1.0)}
    for l in range(L):
        p = 'model.layers.%d.' % l
        w[p + 'input_layernorm.weight'] = rng.vec(H)
        w[p + 'post_attention_layernorm.weight'] = rng.vec(H)
        if not gpt:
            w[p + 'self_attn.q_norm.weight'] = rng.vec(hd)
            w[p + 'self_attn.k_norm.weight'] = rng.vec(hd)
        for name, (r, c) in [('self_attn.q_proj', (Q, H)), ('self_attn.k_proj', (KV, H)),
                             ('self_attn.v_proj', (KV, H)), ('self_attn.o_proj', (H, Q))]:
            w[p + name + '.weight'] = rng.mat(r, c, 2.0 / math.sqrt(c))
            if gpt:
                w[p + name + '.bias'] = small(r, 0.1)
        if gpt:
            w[p + 'self_attn.sinks'] = small(cfg['num_attention_heads'], 1.0)
            w[p + 'mlp.router.weight'] = rng.mat(NE, H, 2.0 / math.sqrt(H))
            w[p + 'mlp.router.bias'] = small(NE, 0.5)
            w[p + 'mlp.experts.gate_up_proj'] = [rng.mat(H, 2 * F, 2.0 / math.sqrt(H)) for _ in range(NE)]
            w[p + 'mlp.experts.gate_up_proj_bias'] = [small(2 * F, 0.1) for _ in range(NE)]
            w[p + 'mlp.experts.down_proj'] = [rng.mat(F, H, 2.0 / math.sqrt(F)) for _ in range(NE)]
            w[p + 'mlp.experts.down_proj_bias'] = [small(H, 0.1) for _ in range(NE)]
        else:
            w[p + 'mlp.gate.weight'] = rng.mat(NE, H, 2.0 / math.sqrt(H))
            for e in range(NE):
                for name, (r, c) in [('gate_proj', (F, H)), ('up_proj', (F, H)), ('down_proj', (H, F))]:
                    w[p + 'mlp.experts.%d.%s.weight' % (e, name)] = rng.mat(r, c, 2.0 / math.sqrt(c))
    w['model.norm.weight'] = rng.vec(H)
    if not cfg.get('tie_word_embeddings'):
        w['lm_head.weight'] = rng.mat(V, H, 2.0 / math.sqrt(H))
    return w


def flat(x):
    if x and isinstance(x[0], list):
        return [v for row in x for v in flat(row)] if isinstance(x[0][0], list) else [v for row in x for v in row]
    return list(x)


def shape(x):
    return [len(x)] + shape(x[0]) if isinstance(x, list) and x and isinstance(x[0], list) else [len(x)]


def rounded(x, fn):
    return [rounded(a, fn) for a in x] if isinstance(x[0], list) else [fn(a) for a in x]


def transpose(m):
    return [list(r) for r in zip(*m)]


def pack(dtype, vals):
    if dtype == 'F32':
        return struct.pack('<%df' % len(vals), *vals)
    if dtype == 'BF16':
        return struct.pack('<%dH' % len(vals), *[bf16_bits(v) for v in vals])
    return bytes(vals)  # U8 / F8_E4M3 codes


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes) in file order."""
    hdr, off, blobs = {}, 0, []
    for name, dt, shp, data in tensors:
        hdr[name] = {'dtype': dt, 'shape': shp, 'data_offsets': [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    hdr['__metadata__'] = {'format': 'pt'}
    h = json.dumps(hdr, separators=(',', ':')).encode()
    h += b' ' * (-(8 + len(h)) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---- quantizers: (tensors to write, dequantized float32 rows) ---------------------------------

def q_fp8(name, w, mode, block=32):
    R, C = len(w), len(w[0])
    if mode == 'tensor':
        s = f32(max(abs(v) for v in flat(w)) / 448.0)
        scale = lambda r, c: s
        st = [(name + '_scale', 'F32', [1], pack('F32', [s]))]
    elif mode == 'channel':
        ss = [f32(max(abs(v) for v in row) / 448.0) for row in w]
        scale = lambda r, c: ss[r]
        st = [(name + '_scale', 'F32', [R, 1], pack('F32', ss))]
    else:
        nr, nc = (R + block - 1) // block, (C + block - 1) // block
        sb = [[bf16(max(abs(w[r][c]) for r in range(i * block, min(R, i * block + block))
                        for c in range(j * block, min(C, j * block + block))) / 448.0)
               for j in range(nc)] for i in range(nr)]
        scale = lambda r, c: sb[r // block][c // block]
        st = [(name + '_scale_inv', 'BF16', [nr, nc], pack('BF16', flat(sb)))]
    codes = [[e4m3_encode(w[r][c] / scale(r, c)) for c in range(C)] for r in range(R)]
    deq = [[bf16(f32(e4m3_value(codes[r][c]) * scale(r, c))) for c in range(C)] for r in range(R)]
    return [(name, 'F8_E4M3', [R, C], bytes(flat(codes)))] + st, deq


def q_nvfp4(name, w, ct=False):
    """ModelOpt's NVFP4 (weight, weight_scale, weight_scale_2 = amax / (6 * 448)), or with ct the
    compressed-tensors names (weight_packed, weight_scale, weight_global_scale = its reciprocal:
    value = e2m1 * weight_scale / weight_global_scale)."""
    R, C = len(w), len(w[0])
    amax = max(abs(v) for v in flat(w))
    g2 = f32(amax / (6.0 * 448.0))
    sc, q = [], []
    for r in range(R):
        srow, qrow = [], []
        for b in range(C // 16):
            grp = w[r][b * 16:(b + 1) * 16]
            code = e4m3_encode(max(abs(v) for v in grp) / 6.0 / g2)
            srow.append(code)
            d = e4m3_value(code) * g2
            qrow += [e2m1_encode(v / d) if d else 0 for v in grp]
        sc.append(srow)
        q.append(qrow)
    packed = [q[r][c] | (q[r][c + 1] << 4) for r in range(R) for c in range(0, C, 2)]
    e2m1v = lambda c: (-1 if c & 8 else 1) * E2M1[c & 7]
    base = name[:-len('.weight')]
    if ct:
        gs = f32(1.0 / g2)
        deq = [[bf16(f32(f32(e2m1v(q[r][c]) * e4m3_value(sc[r][c // 16])) / gs)) for c in range(C)] for r in range(R)]
        return [(base + '.weight_packed', 'U8', [R, C // 2], bytes(packed)),
                (base + '.weight_scale', 'F8_E4M3', [R, C // 16], bytes(flat(sc))),
                (base + '.weight_global_scale', 'F32', [1], pack('F32', [gs])),
                (base + '.input_global_scale', 'F32', [1], pack('F32', [1.0]))], deq
    deq = [[bf16(f32(e2m1v(q[r][c]) * e4m3_value(sc[r][c // 16]) * g2)) for c in range(C)] for r in range(R)]
    return [(name, 'U8', [R, C // 2], bytes(packed)),
            (base + '.weight_scale', 'F8_E4M3', [R, C // 16], bytes(flat(sc))),
            (base + '.weight_scale_2', 'F32', [], pack('F32', [g2])),
            (base + '.input_scale', 'F32', [], pack('F32', [1.0]))], deq


def q_mxfp4(name, w):
    R, C = len(w), len(w[0])
    blocks, scales, q = [], [], []
    for r in range(R):
        qrow, srow = [], []
        for b in range(C // 32):
            grp = w[r][b * 32:(b + 1) * 32]
            amax = max(abs(v) for v in grp)
            e = (math.floor(math.log2(amax)) - 2) if amax > 0 else -127
            srow.append(e + 127)
            qrow += [e2m1_encode(v / 2.0 ** e) for v in grp]
        q.append(qrow)
        scales.append(srow)
    for r in range(R):
        for c in range(0, C, 2):
            blocks.append(q[r][c] | (q[r][c + 1] << 4))
    e2m1v = lambda c: (-1 if c & 8 else 1) * E2M1[c & 7]
    deq = [[f32(e2m1v(q[r][c]) * 2.0 ** (scales[r][c // 32] - 127)) for c in range(C)] for r in range(R)]
    base = name[:-len('.weight')]
    return [(base + '_blocks', 'U8', [R, C // 32, 16], bytes(blocks)),
            (base + '_scales', 'U8', [R, C // 32], bytes(flat(scales)))], deq


# ---- tokenizer ----------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tokenizer_files(d, eos=258):
    b2u = bytes_to_unicode()
    toks = [b2u[b] for b in range(256)] + ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
    merges = []
    for pair in ['Ġt', 'he', 'in', 'er', 'an', 'Ġa', 'on', 're', 'at', 'en', 'Ġs', 'or', 'es', 'is', 'Ġw',
                 'Ġo', 'it', 'ar', 'nd', 'ed', 'Ġb', 'Ġc', 'al', 'ou', 'Ġf', 'ing', 'Ġth', 'Ġthe', 'Ġm', 'le',
                 'Ġp', 'ro', 'ic', 'Ġin', 'as', 'Ġd', 'st', 'ion', 'Ġh', 'Ġl', 'ent']:
        for k in range(1, len(pair)):
            a, b = pair[:k], pair[k:]
            if a in toks and b in toks and pair not in toks:
                merges.append(a + ' ' + b)
                toks.append(pair)
                break
    while len(toks) < VOCAB:
        toks.append('<|reserved_%d|>' % len(toks))
    special = [i for i, t in enumerate(toks) if t.startswith('<|')]
    tj = {'version': '1.0',
          'added_tokens': [{'id': i, 'content': toks[i], 'special': True, 'single_word': False, 'lstrip': False,
                            'rstrip': False, 'normalized': False} for i in special],
          'normalizer': None,
          'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
          'post_processor': None,
          'decoder': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
          'model': {'type': 'BPE', 'vocab': {t: i for i, t in enumerate(toks)}, 'merges': merges, 'dropout': None,
                    'unk_token': None, 'continuing_subword_prefix': None, 'end_of_word_suffix': None,
                    'fuse_unk': False, 'byte_fallback': False}}
    with open(os.path.join(d, 'tokenizer.json'), 'w') as f:
        json.dump(tj, f, ensure_ascii=False)
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
        json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': toks[eos], 'bos_token': None,
                   'model_max_length': 256,
                   'chat_template': "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"},
                  f)


# ---- variants -----------------------------------------------------------------------------------

def variant_config(v):
    cfg = dict(BASE)
    if v.startswith('qwen3moe'):
        cfg.update(architectures=['Qwen3MoeForCausalLM'], model_type='qwen3_moe', head_dim=32,
                   tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6, num_experts=8,
                   num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
                   mlp_only_layers=[], use_sliding_window=False, sliding_window=None, max_window_layers=2)
        return cfg, 4
    if v.startswith('gptoss'):
        cfg.update(architectures=['GptOssForCausalLM'], model_type='gpt_oss', head_dim=32, intermediate_size=32,
                   num_local_experts=4, num_experts_per_tok=2, experts_per_token=2, sliding_window=8,
                   layer_types=['sliding_attention', 'full_attention'], rope_theta=150000.0,
                   rope_scaling={'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0, 'beta_slow': 1.0,
                                 'truncate': False, 'original_max_position_embeddings': 4096},
                   max_position_embeddings=131072, initial_context_length=4096, attention_bias=True,
                   swiglu_limit=7.0, tie_word_embeddings=False, router_aux_loss_coef=0.9,
                   output_router_logits=False)
        return cfg, 5
    if v.startswith('qwen3'):
        cfg.update(architectures=['Qwen3ForCausalLM'], model_type='qwen3', head_dim=32, tie_word_embeddings=True,
                   rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=None,
                   max_window_layers=2)
        return cfg, 3
    cfg.update(architectures=['LlamaForCausalLM'], model_type='llama', tie_word_embeddings=False)
    if v == 'llama-fp8-block128':  # wider, so that 128x128 blocks are whole and partial
        cfg.update(hidden_size=192, intermediate_size=320)
        return cfg, 6
    if v == 'llama3-hd':
        cfg.update(head_dim=32, tie_word_embeddings=True, rope_theta=500000.0,
                   rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                 'high_freq_factor': 4.0, 'original_max_position_embeddings': 32})
        return cfg, 2
    return cfg, 1


VARIANTS = ['llama-f32', 'llama-bf16', 'llama-fp8-tensor', 'llama-fp8-channel', 'llama-fp8-block', 'llama-nvfp4',
            'llama-mxfp4', 'llama3-hd', 'qwen3-f32', 'llama-fp8-block128', 'llama-nvfp4-ct', 'qwen3moe-f32', 'qwen3moe-bf16', 'qwen3moe-fp8-block',
            'gptoss-f32', 'gptoss-bf16',
            'gptoss-mxfp4']
MXFP4_EXPERTS = ('mlp.experts.gate_up_proj', 'mlp.experts.down_proj')


def q_mxfp4_experts(name, w):
    """gpt-oss's stacked experts ([E, in, out] in transformers) as published: the blocks and scales
    of each expert's [out, in] matrix, stacked; dequantized back in transformers' [E, in, out]."""
    blocks, scales, deq = [], [], []
    for m in w:
        t, d = q_mxfp4('x.weight', transpose(m))
        blocks.append(t[0][3])
        scales.append(t[1][3])
        deq.append(transpose(d))
        bshape, sshape = t[0][2], t[1][2]
    n = len(w)
    return [(name + '_blocks', 'U8', [n] + bshape, b''.join(blocks)),
            (name + '_scales', 'U8', [n] + sshape, b''.join(scales))], deq


def build(v):
    """(config dict, tensors per shard file {file: [...]}, dequantized float weights {hf name: rows})."""
    cfg, seed = variant_config(v)
    w = make_weights(cfg, seed)
    out, deq = [], {}
    float_dt = 'F32' if v.endswith('f32') else 'BF16'
    cfg['torch_dtype'] = 'float32' if float_dt == 'F32' else 'bfloat16'
    for name, x in w.items():
        is_proj = any(name.endswith(p + '.weight') for p in PROJ)
        if v == 'qwen3moe-fp8-block' and ('.mlp.experts.' in name or (is_proj and 'self_attn' in name)):
            is_proj = True
        if is_proj and v == 'llama-fp8-block128':
            t, d = q_fp8(name, x, 'block', 128)
        elif is_proj and v == 'qwen3moe-fp8-block':
            t, d = q_fp8(name, x, 'block', 32)
        elif is_proj and v.startswith('llama-fp8'):
            t, d = q_fp8(name, x, v.split('-')[2])
        elif is_proj and v == 'llama-nvfp4':
            t, d = q_nvfp4(name, x)
        elif is_proj and v == 'llama-nvfp4-ct':
            t, d = q_nvfp4(name, x, ct=True)
        elif is_proj and v == 'llama-mxfp4':
            t, d = q_mxfp4(name, x)
        elif v.startswith('gptoss-mxfp4') and any(name.endswith(p) for p in MXFP4_EXPERTS):
            t, d = q_mxfp4_experts(name, x)
            if v == 'gptoss-mxfp4-short' and name == 'model.layers.0.mlp.experts.gate_up_proj':
                # malformed on purpose (test_hf): each row's blocks cut to the first of its two
                E, R, NB, _ = t[0][2]
                t[0] = (t[0][0], 'U8', [E, R, 1, 16], b''.join(t[0][3][(r * NB) * 16:(r * NB + 1) * 16]
                                                               for r in range(E * R)))
        else:
            t = [(name, float_dt, shape(x), pack(float_dt, flat(x)))]
            d = x if float_dt == 'F32' else rounded(x, bf16)
        out += t
        deq[name] = d
    if v.startswith('llama-fp8') or v == 'qwen3moe-fp8-block':
        if v.startswith('llama-fp8-block') or v == 'qwen3moe-fp8-block':
            bs = 128 if v == 'llama-fp8-block128' else 32
            cfg['quantization_config'] = {'quant_method': 'fp8', 'activation_scheme': 'dynamic',
                                          'weight_block_size': [bs, bs]}
        else:
            cfg['quantization_config'] = {'quant_method': 'compressed-tensors', 'format': 'float-quantized',
                                          'config_groups': {'group_0': {'targets': ['Linear'], 'weights': {
                                              'num_bits': 8, 'type': 'float', 'symmetric': True,
                                              'strategy': v.split('-')[2]}}}, 'ignore': ['lm_head']}
    elif v == 'llama-nvfp4':
        cfg['quantization_config'] = {'quant_method': 'modelopt', 'quant_algo': 'NVFP4', 'group_size': 16,
                                      'exclude_modules': ['lm_head']}
    elif v == 'llama-nvfp4-ct':
        cfg['quantization_config'] = {
            'quant_method': 'compressed-tensors', 'format': 'nvfp4-pack-quantized', 'ignore': ['lm_head'],
            'config_groups': {'group_0': {'targets': ['Linear'], 'format': 'nvfp4-pack-quantized',
                                          'weights': {'num_bits': 4, 'type': 'float', 'symmetric': True,
                                                      'strategy': 'tensor_group', 'group_size': 16},
                                          'input_activations': {'num_bits': 4, 'type': 'float', 'symmetric': True,
                                                                'strategy': 'tensor_group', 'group_size': 16,
                                                                'dynamic': 'local'}}}}
    elif v == 'llama-mxfp4':
        cfg['quantization_config'] = {'quant_method': 'mxfp4', 'modules_to_not_convert': ['lm_head']}
    elif v.startswith('gptoss-mxfp4'):
        cfg['quantization_config'] = {'quant_method': 'mxfp4', 'modules_to_not_convert': [
            'model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head']}
    files = {'model.safetensors': out}
    if v in ('llama3-hd', 'qwen3moe-bf16'):
        half = [t for t in out if t[0].startswith('model.layers.1.')]
        files = {'model-00001-of-00002.safetensors': [t for t in out if t not in half],
                 'model-00002-of-00002.safetensors': half}
    return cfg, files, deq


def fnv1a64(data, h=0xCBF29CE484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_variant(root, v):
    cfg, files, deq = build(v)
    d = os.path.join(root, v)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(cfg, f, indent=1)
    h = 0xCBF29CE484222325
    for fn in sorted(files):
        write_safetensors(os.path.join(d, fn), files[fn])
        with open(os.path.join(d, fn), 'rb') as f:
            h = fnv1a64(f.read(), h)
    if len(files) > 1:
        wm = {t[0]: fn for fn in files for t in files[fn]}
        with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {'total_size': sum(len(t[3]) for fn in files for t in files[fn])}, 'weight_map': wm},
                      f, indent=1)
    if v.startswith('llama-nvfp4'):
        with open(os.path.join(d, 'hf_quant_config.json'), 'w') as f:
            json.dump({'producer': {'name': 'modelopt'}, 'quantization': {'quant_algo': 'NVFP4', 'group_size': 16,
                                                                          'exclude_modules': ['lm_head']}}, f)
    tokenizer_files(d)
    return cfg, deq, '%016x' % h


def main():
    root = sys.argv[1]
    only = sys.argv[2:] or VARIANTS
    for v in only:
        _, _, h = write_variant(root, v)
        print(v, h)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""gguf-to-hf.py: write a llama GGUF file (F32/F16/BF16 tensors) as a Hugging Face directory
(config.json + safetensors shards + index), undoing the converter's Q/K row permutation, so that
loading the directory gives the same weights as the file. Standard library only; copies bytes.
For bench/hf-load.sh. Usage: gguf-to-hf.py FILE.gguf OUTDIR [SHARD_GB]"""
import json
import os
import struct
import sys

TYPES = {0: ('F32', 4), 1: ('F16', 2), 30: ('BF16', 2)}


def read_gguf(path):
    f = open(path, 'rb')
    def rd(fmt):
        return struct.unpack('<' + fmt, f.read(struct.calcsize('<' + fmt)))
    def rstr():
        (n,) = rd('Q')
        return f.read(n).decode('utf-8', 'replace')
    sz = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}
    def rval(t):
        if t == 8:
            return rstr()
        if t == 9:
            (et, n) = rd('IQ')
            return [rval(et) for _ in range(n)]
        return rd(sz[t])[0]
    magic, ver, nt, nkv = rd('4sIQQ')
    assert magic == b'GGUF'
    kv = {}
    for _ in range(nkv):
        k = rstr()
        (t,) = rd('I')
        kv[k] = rval(t)
    tensors = []
    for _ in range(nt):
        name = rstr()
        (nd,) = rd('I')
        ne = list(rd('%dQ' % nd))
        ty, off = rd('IQ')
        tensors.append((name, ne, ty, off))
    al = kv.get('general.alignment', 32)
    data0 = (f.tell() + al - 1) // al * al
    return kv, tensors, data0


def main():
    src, out = sys.argv[1], sys.argv[2]
    shard_bytes = float(sys.argv[3] if len(sys.argv) > 3 else 2) * 1e9
    kv, tensors, data0 = read_gguf(src)
    A = kv['general.architecture']
    assert A == 'llama', A
    H, KV = kv[A + '.attention.head_count'], kv[A + '.attention.head_count_kv']
    E = kv[A + '.embedding_length']
    hd = kv.get(A + '.attention.key_length', E // H)
    names = {'token_embd': 'model.embed_tokens', 'output_norm': 'model.norm', 'output': 'lm_head',
             'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm', 'attn_q': 'self_attn.q_proj',
             'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
             'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj', 'ffn_down': 'mlp.down_proj'}
    os.makedirs(out, exist_ok=True)
    items = []
    for name, ne, ty, off in tensors:
        if ty not in TYPES:
            sys.exit('%s: type %d (only F32, F16, BF16)' % (name, ty))
        parts = name.split('.')
        if parts[0] == 'blk':
            hf = 'model.layers.%s.%s.weight' % (parts[1], names[parts[2]])
        elif parts[0] in names:
            hf = names[parts[0]] + '.weight'
        else:
            continue  # rope_freqs: from config.json
        dt, es = TYPES[ty]
        n = 1
        for d in ne:
            n *= d
        items.append((hf, dt, list(reversed(ne)), data0 + off, n * es, name))
    shards, cur, size = [], [], 0
    for it in items:
        if cur and size + it[4] > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += it[4]
    shards.append(cur)
    f = open(src, 'rb')
    wm = {}
    for si, sh in enumerate(shards):
        fn = 'model-%05d-of-%05d.safetensors' % (si + 1, len(shards))
        hdr, o = {}, 0
        for hf, dt, shape, _, nb, _ in sh:
            hdr[hf] = {'dtype': dt, 'shape': shape, 'data_offsets': [o, o + nb]}
            o += nb
            wm[hf] = fn
        h = json.dumps(hdr).encode()
        h += b' ' * (-(8 + len(h)) % 8)
        with open(os.path.join(out, fn), 'wb') as g:
            g.write(struct.pack('<Q', len(h)) + h)
            for hf, dt, shape, off, nb, gname in sh:
                f.seek(off)
                heads = H if gname.endswith('attn_q.weight') else KV if gname.endswith('attn_k.weight') else 0
                if not heads:
                    left = nb
                    while left:
                        b = f.read(min(left, 1 << 26))
                        g.write(b)
                        left -= len(b)
                    continue
                data = f.read(nb)
                row = nb // shape[0]
                for h_ in range(heads):
                    for j in range(2):
                        for i in range(hd // 2):
                            r = h_ * hd + 2 * i + j
                            g.write(data[r * row:(r + 1) * row])
    with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as g:
        json.dump({'metadata': {}, 'weight_map': wm}, g)
    cfg = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_size': E,
           'num_hidden_layers': kv[A + '.block_count'], 'num_attention_heads': H, 'num_key_value_heads': KV,
           'head_dim': hd, 'intermediate_size': kv[A + '.feed_forward_length'],
           'vocab_size': tensors and [t[1][1] for t in tensors if t[0] == 'token_embd.weight'][0],
           'max_position_embeddings': kv.get(A + '.context_length', 2048),
           'rms_norm_eps': kv.get(A + '.attention.layer_norm_rms_epsilon', 1e-5),
           'rope_theta': kv.get(A + '.rope.freq_base', 10000.0),
           'tie_word_embeddings': not any(t[0] == 'output.weight' for t in tensors), 'torch_dtype': 'bfloat16'}
    with open(os.path.join(out, 'config.json'), 'w') as g:
        json.dump(cfg, g, indent=1)


if __name__ == '__main__':
    main()

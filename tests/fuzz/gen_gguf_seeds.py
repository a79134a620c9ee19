#!/usr/bin/env python3
"""Write the seed corpus of fuzz_gguf: small GGUF files (v2, v3) with every kv type, string and
number arrays, and tensors of several types. usage: gen_gguf_seeds.py OUTDIR"""
import os
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
       U64: "<Q", I64: "<q", F64: "<d"}
T_F32, T_F16, T_Q4_0, T_Q4_1, T_Q8_0 = 0, 1, 2, 3, 8
BLOCK = {T_F32: (1, 4), T_F16: (1, 2), T_Q4_0: (32, 18), T_Q4_1: (32, 20), T_Q8_0: (32, 34)}


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def val(t, v):
    if t == STR:
        return s(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(val(et, i) for i in items)
    return struct.pack(FMT[t], v)


def gguf(version, kvs, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += s(k) + struct.pack("<I", t) + val(t, v)
    off, datas = 0, []
    for name, ne, t in tensors:
        n = 1
        for d in ne:
            n *= d
        blk, size = BLOCK[t]
        nbytes = n // blk * size
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", t, off)
        datas.append((off, bytes((i * 7 + 3) & 0x3f for i in range(nbytes))))
        off += (nbytes + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    data = bytearray(off)
    for o, d in datas:
        data[o:o + len(d)] = d
    return out + bytes(data)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    llama = [
        ("general.architecture", STR, "llama"),
        ("general.alignment", U32, 32),
        ("general.name", STR, "seed"),
        ("llama.block_count", U32, 1),
        ("llama.embedding_length", U32, 32),
        ("llama.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.add_bos_token", BOOL, False),
        ("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "ab", "<|im_end|>"])),
        ("tokenizer.ggml.token_type", ARR, (I32, [1, 1, 1, 3])),
        ("tokenizer.ggml.merges", ARR, (STR, ["a b"])),
        ("tokenizer.ggml.eos_token_id", U32, 3),
    ]
    tensors = [("token_embd.weight", [32, 4], T_Q8_0), ("output_norm.weight", [32], T_F32),
               ("blk.0.attn_q.weight", [32, 32], T_Q4_1), ("blk.0.ffn_up.weight", [32, 2], T_Q4_0),
               ("blk.0.attn_norm.weight", [32], T_F16)]
    seeds = {
        "llama_v3.gguf": gguf(3, llama, tensors),
        "llama_v2.gguf": gguf(2, llama, tensors[:2]),
        "empty_v3.gguf": gguf(3, [], []),
        "kv_types.gguf": gguf(3, [("u8", U8, 7), ("i8", I8, -7), ("u16", U16, 700), ("i16", I16, -700),
                                  ("u32", U32, 70000), ("i32", I32, -70000), ("f32", F32, 1.5),
                                  ("b", BOOL, True), ("str", STR, "x\u00e9"), ("u64", U64, 1 << 40),
                                  ("i64", I64, -(1 << 40)), ("f64", F64, 2.25),
                                  ("arr_u8", ARR, (U8, [1, 2, 3])), ("arr_f64", ARR, (F64, [0.5])),
                                  ("arr_empty", ARR, (I32, []))], []),
        "align64.gguf": gguf(3, [("general.alignment", U32, 64)], [("t", [3, 2], T_F32), ("u", [64], T_F16)], 64),
    }
    for name, data in seeds.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "fuzz_gguf"))

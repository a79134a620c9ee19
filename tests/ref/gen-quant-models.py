#!/usr/bin/env python3
"""gen-quant-models.py: llama.cpp's view of small models in Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4,
for tests/unit/test_quant_types.c (writes tests/data/quant/models.json).

spk-synth writes one small F32 model (the SHAPE below, seed 7). For each type:
  - "tensors_fnv": FNV-1a 64 over every tensor (sorted by name: name bytes, u32 ggml type, data)
    as llama.cpp's libggml quantizes them (ggml_quantize_chunk, no importance matrix: the call
    llama-quantize --pure makes; matrices in the type, token_embd in Q8_0, 1-D tensors F32). The
    test writes the same model with spk-synth --type <type> and must get the same hash: our
    writer's blocks are llama.cpp's, byte for byte, over a whole model.
  - with --quantize (llama-quantize), run in build-llamacpp.sh's virtualenv
    (numpy, llama_cpp): llama-quantize --pure makes the file, whose tensors must hash the same,
    and "positions" gets llama.cpp's top-5 next-token log-probs after each prefix of TOKENS (one
    batched eval, 2 threads), which the test compares with our forward pass on our copy.
No model is committed: only hashes and log-probs.
  tests/ref/make-quant-reference.sh     (builds what it needs, then runs this)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

TYPES = [  # our --type name, llama-quantize type name
    ("q5_0", "Q5_0"),
    ("q5_1", "Q5_1"),
    ("q2_k", "Q2_K"),
    ("q3_k", "Q3_K"),
    ("q4_k", "Q4_K"),
    ("q5_k", "Q5_K"),
    ("q6_k", "Q6_K"),
    ("mxfp4", "MXFP4_MOE"),
]
SHAPE = ["--preset", "smollm2-135m", "--layers", "2", "--embd", "256", "--heads", "4",
         "--kv-heads", "2", "--ff", "768", "--vocab", "1024", "--seed", "7"]
N_TOK = 24
TOKENS = [(i * 7919 + 13) % 1024 for i in range(N_TOK)]
TOP_K = 5


GGML_TYPE = {"f32": 0, "q8_0": 8, "q5_0": 6, "q5_1": 7, "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14,
             "mxfp4": 39}
BLOCK = {0: (1, 4), 8: (32, 34), 6: (32, 22), 7: (32, 24), 10: (256, 84), 11: (256, 110), 12: (256, 144),
         13: (256, 176), 14: (256, 210), 39: (32, 17)}


def read_gguf(path):
    """Minimal GGUF v3 reader (no numpy): {name: (ne, ggml type, data bytes)}."""
    import struct
    with open(path, "rb") as f:
        buf = f.read()
    off = 0

    def rd(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, buf, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def rd_str():
        nonlocal off
        n = rd("Q")
        off += n
        return buf[off - n:off].decode()

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def skip_val(t):
        nonlocal off
        if t == 8:
            rd_str()
        elif t == 9:
            et, n = rd("I"), rd("Q")
            for _ in range(n):
                skip_val(et)
        else:
            rd(sizes[t])

    assert buf[:4] == b"GGUF", path
    off = 4
    rd("I")
    n_t, n_kv = rd("Q"), rd("Q")
    align = 32
    for _ in range(n_kv):
        k, t = rd_str(), rd("I")
        if k == "general.alignment":
            align = rd("I")
        else:
            skip_val(t)
    infos = []
    for _ in range(n_t):
        name, nd = rd_str(), rd("I")
        ne = [rd("Q") for _ in range(nd)]
        ty, o = rd("I"), rd("Q")
        infos.append((name, ne, ty, o))
    data = (off + align - 1) // align * align
    out = {}
    for name, ne, ty, o in infos:
        n = 1
        for d in ne:
            n *= d
        blk, bsz = BLOCK[ty]
        out[name] = (ne, ty, buf[data + o:data + o + n // blk * bsz])
    return out


def read_gguf_f32(path):
    """{name: (ne, f32 bytes)} of an all-F32 file."""
    t = read_gguf(path)
    assert all(ty == 0 for _, ty, _ in t.values()), f"{path}: not all F32"
    return {k: (ne, raw) for k, (ne, _, raw) in t.items()}


def fnv_feed(h, data):
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def ggml_model_fnv(lib, f32_tensors, wtype):
    """What llama-quantize --pure TYPE --token-embedding-type q8_0 computes for each tensor, via
    the same libggml call (ggml_quantize_chunk, no importance matrix): 1-D tensors stay F32."""
    import ctypes
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    h = 0xCBF29CE484222325
    types = {}
    for name in sorted(f32_tensors):
        ne, raw = f32_tensors[name]
        if len(ne) == 1:
            ty, data = 0, raw
        else:
            ty = 8 if name == "token_embd.weight" else GGML_TYPE[wtype]
            blk, bsz = BLOCK[ty]
            rows = len(raw) // 4 // ne[0]
            dst = ctypes.create_string_buffer(rows * ne[0] // blk * bsz)
            src = ctypes.create_string_buffer(raw, len(raw))
            n = lib.ggml_quantize_chunk(ty, src, dst, 0, rows, ne[0], None)
            assert n == len(dst.raw), (name, n, len(dst.raw))
            data = dst.raw
        types[name] = ty
        h = fnv_feed(h, name.encode())
        h = fnv_feed(h, ty.to_bytes(4, "little"))
        h = fnv_feed(h, data)
    return f"{h:016x}", types


def fnv_tensors(path):
    """The same hash over a GGUF file's tensors as they are stored."""
    t = read_gguf(path)
    h = 0xCBF29CE484222325
    for name in sorted(t):
        _, ty, data = t[name]
        h = fnv_feed(h, name.encode())
        h = fnv_feed(h, ty.to_bytes(4, "little"))
        h = fnv_feed(h, data)
    return f"{h:016x}", {k: v[1] for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth", required=True, help="spk-synth binary")
    ap.add_argument("--libggml", required=True, help="llama.cpp's libggml-base.so")
    ap.add_argument("--quantize", help="llama-quantize binary: also llama.cpp's log-probs, which "
                    "need numpy and the llama_cpp package of build-llamacpp.sh's venv")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import ctypes
    lib = ctypes.CDLL(args.libggml)

    out = {"shape": SHAPE, "tokens": TOKENS, "top_k": TOP_K, "models": []}
    with tempfile.TemporaryDirectory() as td:
        f32 = os.path.join(td, "f32.gguf")
        subprocess.run([args.synth, *SHAPE, "--type", "f32", "--embd-type", "f32", "-o", f32],
                       check=True, stdout=subprocess.DEVNULL)
        tensors = read_gguf_f32(f32)
        for ours, theirs in TYPES:
            fnv, types = ggml_model_fnv(lib, tensors, ours)
            m = {"type": ours, "tensor_types": types, "tensors_fnv": fnv}
            if args.quantize:
                import numpy as np
                import llama_cpp
                q = os.path.join(td, f"{ours}.gguf")
                subprocess.run([args.quantize, "--pure", "--token-embedding-type", "q8_0", f32, q,
                                theirs], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                qfnv, qtypes = fnv_tensors(q)
                if (qfnv, qtypes) != (fnv, types):
                    sys.exit(f"{ours}: llama-quantize's file differs from ggml_quantize_chunk's "
                             f"blocks ({qfnv} vs {fnv})")
                llm = llama_cpp.Llama(model_path=q, n_ctx=64, n_batch=64, n_ubatch=64,
                                      n_threads=2, n_threads_batch=2, n_gpu_layers=0,
                                      logits_all=True, seed=0, verbose=False)
                llm.eval(TOKENS)
                sc = np.array(llm.scores[:N_TOK, :], dtype=np.float64)
                pos = []
                for i in range(N_TOK):
                    lp = sc[i] - sc[i].max()
                    lp = lp - np.log(np.exp(lp).sum())
                    top = np.argsort(-lp, kind="stable")[:TOP_K]
                    pos.append([[int(t), round(float(lp[t]), 5)] for t in top])
                del llm
                m["llama_quantize_type"] = theirs
                m["positions"] = pos
                out["llama_cpp_python"] = llama_cpp.__version__
            out["models"].append(m)
            print(f"{ours}: tensors {fnv}", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

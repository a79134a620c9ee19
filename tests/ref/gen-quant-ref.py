#!/usr/bin/env python3
"""gen-quant-ref.py: reference blocks for the weight types Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4,
made by llama.cpp's own ggml (libggml-base from tests/ref/build-llamacpp.sh), for
tests/unit/test_quant_types.c.

For each type: 1024 floats from a fixed generator (the same integer recipe as the C test, so the
input is not stored), quantized with ggml's quantize_row_<type>_ref and dequantized with ggml's
dequantize_row_<type>. Writes tests/data/quant/<type>.bin:
    "SPKQ" u32 ggml_type u32 n u32 nbytes, nbytes of blocks, n float32 (ggml's dequantization)
little-endian. Usage: tests/ref/gen-quant-ref.py LIBGGML_BASE_SO OUT_DIR
(e.g. "$SPK_CACHE/llamacpp/build/bin/libggml-base.so" tests/data/quant).
"""
import ctypes
import struct
import sys

N = 1024
TYPES = [  # name, ggml type id, block elements, block bytes
    ("q5_0", 6, 32, 22),
    ("q5_1", 7, 32, 24),
    ("q2_K", 10, 256, 84),
    ("q3_K", 11, 256, 110),
    ("q4_K", 12, 256, 144),
    ("q5_K", 13, 256, 176),
    ("q6_K", 14, 256, 210),
    ("mxfp4", 39, 32, 17),
]
M64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def inputs(seed):
    """x[i] = (24-bit draw - 2^23) * 2^-22 * 2^(e-4), e in 0..7 per block of 32; block 5 is all
    zero and block 9 constant, to reach the quantizers' edge cases. Every value is exact in f32."""
    s = seed
    xs = []
    for b in range(N // 32):
        s, z = splitmix64(s)
        e = z % 8
        for j in range(32):
            s, z = splitmix64(s)
            v = ((z >> 40) - (1 << 23)) * 2.0 ** -22 * 2.0 ** (e - 4)
            if b == 5:
                v = 0.0
            elif b == 9:
                v = 0.75
            xs.append(v)
    return xs


def main():
    lib = ctypes.CDLL(sys.argv[1])
    out_dir = sys.argv[2]
    x = (ctypes.c_float * N)(*inputs(12345))
    for name, tid, blk, bsz in TYPES:
        nbytes = N // blk * bsz
        q = (ctypes.c_uint8 * nbytes)()
        y = (ctypes.c_float * N)()
        getattr(lib, f"quantize_row_{name}_ref")(x, q, ctypes.c_int64(N))
        getattr(lib, f"dequantize_row_{name}")(q, y, ctypes.c_int64(N))
        with open(f"{out_dir}/{name.lower()}.bin", "wb") as f:
            f.write(b"SPKQ" + struct.pack("<III", tid, N, nbytes))
            f.write(bytes(q))
            f.write(struct.pack(f"<{N}f", *y))
        print(f"{name}: {nbytes} bytes of blocks", file=sys.stderr)


if __name__ == "__main__":
    main()

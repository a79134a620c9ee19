/*
 * libFuzzer target for the GGUF reader: any input must give OK, FORMAT or UNSUPPORTED (never a
 * crash, an out-of-bounds read or a huge allocation), and an accepted file must be consistent:
 * every tensor inside the input, every string array walkable to its count, lookups working,
 * and the tokenizer built from its metadata refused with a status or usable.
 * Build: cmake -DSPK_FUZZ=ON with clang (add -fsanitize=fuzzer-no-link to CMAKE_C_FLAGS so the
 * library itself is coverage-instrumented); run: ./fuzz_gguf -max_total_time=60 corpus/
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Exact-size copy: libFuzzer's buffer is already exact, but this keeps the contract
     * (caller-owned, outlives the file) explicit. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    spk_gguf_file *f = NULL;
    spk_status st = spk_gguf_open_memory(buf, size, &f);
    if (st != SPK_OK && st != SPK_ERR_FORMAT && st != SPK_ERR_UNSUPPORTED)
        abort();
    if (st != SPK_OK) {
        if (f)
            abort();
        free(buf);
        return 0;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const spk_gguf_tensor *t = &f->tensors[i];
        const uint8_t *d = t->data;
        if (d < buf || t->nbytes > size || d + t->nbytes > buf + size ||
            t->offset % f->alignment != 0)
            abort();
        if (t->nbytes)
            sink ^= d[0] ^ d[t->nbytes - 1];
        char name[128];
        if (t->name.len < sizeof name) {
            memcpy(name, t->name.ptr, (size_t)t->name.len);
            name[t->name.len] = '\0';
            if (strlen(name) == t->name.len && spk_gguf_find_tensor(f, name) != t)
                abort(); /* names are unique, so lookup must return this one */
        }
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const spk_gguf_kv *kv = &f->kv[i];
        if (kv->type == GGUF_STRING && kv->v.s.len)
            sink ^= (uint8_t)kv->v.s.ptr[kv->v.s.len - 1];
        if (kv->type != GGUF_ARRAY)
            continue;
        if (kv->v.arr.type == GGUF_STRING) {
            uint64_t pos = 0, n = 0;
            spk_gguf_str s;
            while ((s = spk_gguf_arr_str_next(kv, &pos)).ptr) {
                if (s.len)
                    sink ^= (uint8_t)s.ptr[s.len - 1];
                n++;
            }
            if (n != kv->v.arr.count || pos != kv->v.arr.nbytes)
                abort();
        } else if (kv->v.arr.count) {
            int64_t iv;
            double dv;
            sink ^= (uint8_t)spk_gguf_arr_int(kv, kv->v.arr.count - 1, &iv);
            sink ^= (uint8_t)spk_gguf_arr_float(kv, kv->v.arr.count - 1, &dv);
        }
    }
    uint32_t u;
    int64_t i64;
    float fl;
    bool b;
    spk_gguf_str s;
    const spk_gguf_kv *arr;
    sink ^= (uint8_t)spk_gguf_get_u32(f, "general.alignment", &u);
    sink ^= (uint8_t)spk_gguf_get_i64(f, "llama.block_count", &i64);
    sink ^= (uint8_t)spk_gguf_get_f32(f, "llama.rope.freq_base", &fl);
    sink ^= (uint8_t)spk_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b);
    sink ^= (uint8_t)spk_gguf_get_str(f, "general.architecture", &s);
    sink ^= (uint8_t)spk_gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &arr);
    /* The tokenizer built from this metadata: refused cleanly, or usable. */
    spk_tok *tok = NULL;
    st = spk_tok_load(f, 0, &tok);
    if (st == SPK_OK) {
        static const char text[] = "ab <|im_end|> caf\xc3\xa9";
        int32_t ids[64];
        size_t n = 0;
        spk_tok_encode(tok, text, sizeof text - 1, true, true, ids, 64, &n);
        spk_tok_free(tok);
    } else if (tok) {
        abort();
    }
    spk_gguf_close(f);
    free(buf);
    return 0;
}

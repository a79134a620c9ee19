/*
 * The identity of a model file: what every rank compares before it serves, so that ranks which
 * opened different files under one path refuse instead of computing with mixed weights.
 */
#include <sodium.h>
#include <string.h>

#include "model/gguf.h"
#include "model/hf.h"

/* Bytes of each tensor's data hashed at its start, middle and end. */
#define SAMPLE 4096

static void absorb_u64(crypto_generichash_state *st, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, sizeof b);
}

static void absorb_range(crypto_generichash_state *st, const spk_gguf_file *f, uint64_t off, uint64_t len)
{
    if (off > f->size)
        return;
    if (len > f->size - off)
        len = f->size - off;
    crypto_generichash_update(st, f->base + off, (unsigned long long)len);
}

void spk_gguf_identity(const spk_gguf_file *f, uint8_t out[SPK_GGUF_ID_BYTES])
{
    if (f->hf) {
        spk_hf_identity(f, out);
        return;
    }
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const unsigned char *)"spk-gguf-identity-v1", 20, SPK_GGUF_ID_BYTES);
    absorb_u64(&st, f->size);
    /* the whole header: metadata, vocabulary, every tensor's name, type, shape and offset */
    absorb_range(&st, f, 0, f->data_offset);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const spk_gguf_tensor *t = &f->tensors[i];
        uint64_t off = (uint64_t)((const uint8_t *)t->data - f->base), n = t->nbytes;
        if (n <= 3 * SAMPLE) {
            absorb_range(&st, f, off, n);
            continue;
        }
        absorb_range(&st, f, off, SAMPLE);
        absorb_range(&st, f, off + (n / 2 - SAMPLE / 2), SAMPLE);
        absorb_range(&st, f, off + n - SAMPLE, SAMPLE);
    }
    crypto_generichash_final(&st, out, SPK_GGUF_ID_BYTES);
}

/*
 * libFuzzer target for the tokenizer: arbitrary bytes are tokenized with the byte-level BPE
 * vocabulary of a synthetic model (all 256 byte tokens, merges, ChatML special tokens), under
 * both pre-tokenizers ("smollm", "llama-bpe"), with and without special-token parsing.
 * Properties: encoding never fails on any bytes and never writes past `cap`; decoding the ids
 * gives back exactly the input bytes; the streaming decoder's output is valid UTF-8 and, for
 * valid UTF-8 input, equal to the input; every id it returns has a piece.
 * Build: cmake -DSPK_FUZZ=ON -DCMAKE_C_COMPILER=clang; run: ./fuzz_tokenizer -max_total_time=60
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/gguf.h"
#include "tools/synth.h"
#include "model/tokenizer.h"

static spk_tok *g_tok[2]; /* smollm, llama-bpe */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what)
{
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, spk_last_error());
    abort();
}

/* The vocabulary of a small synthetic model, as a spec (the GGUF adapter's work, by hand, so
 * the same vocabulary can go under both pre-tokenizers). */
static void build(void)
{
    char path[] = "/tmp/spk_fuzz_tok_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        abort();
    close(fd);
    spk_synth_params p;
    spk_synth_params_init(&p);
    p.n_layers = 1;
    p.n_embd = 32;
    p.n_heads = 1;
    p.n_kv_heads = 1;
    p.n_ff = 32;
    p.n_vocab = 1024;
    p.n_ctx_train = 64;
    if (spk_synth_write(path, &p) != SPK_OK)
        die("synth");
    spk_gguf_file *f = NULL;
    if (spk_gguf_open(path, &f) != SPK_OK)
        die("open");
    unlink(path);
    const spk_gguf_kv *toks = NULL, *merges = NULL, *types = NULL;
    if (spk_gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &toks) != SPK_OK ||
        spk_gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING, &merges) != SPK_OK ||
        spk_gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_INT32, &types) != SPK_OK)
        die("vocabulary arrays");
    size_t nt = (size_t)toks->v.arr.count, nm = (size_t)merges->v.arr.count;
    spk_tok_str *ts = calloc(nt, sizeof *ts), *ms = calloc(nm ? nm : 1, sizeof *ms);
    int32_t *tt = calloc(nt, sizeof *tt);
    if (!ts || !ms || !tt)
        abort();
    uint64_t pos = 0;
    for (size_t i = 0; i < nt; i++) {
        spk_gguf_str s = spk_gguf_arr_str_next(toks, &pos);
        ts[i] = (spk_tok_str){s.ptr, (size_t)s.len};
        int64_t v = 0;
        spk_gguf_arr_int(types, i, &v);
        tt[i] = (int32_t)v;
    }
    pos = 0;
    for (size_t i = 0; i < nm; i++) {
        spk_gguf_str s = spk_gguf_arr_str_next(merges, &pos);
        ms[i] = (spk_tok_str){s.ptr, (size_t)s.len};
    }
    static const char *const pres[2] = {"smollm", "llama-bpe"};
    for (int k = 0; k < 2; k++) {
        spk_tok_spec spec;
        spk_tok_spec_init(&spec);
        spec.model = "gpt2";
        spec.pre = pres[k];
        spec.n_tokens = nt;
        spec.tokens = ts;
        spec.token_types = tt;
        spec.n_merges = nm;
        spec.merges = ms;
        spec.eos = SPK_SYNTH_TOK_IM_END;
        spec.add_bos = 0;
        if (spk_tok_new(&spec, &g_tok[k]) != SPK_OK)
            die(pres[k]);
    }
    free(ts);
    free(ms);
    free(tt);
    spk_gguf_close(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    build();
    return 0;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (k >= n - i)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0; /* long inputs add time, not coverage */
    const char *text = (const char *)data;
    const size_t cap = size + 2;
    int32_t *ids = malloc(cap * sizeof *ids);
    char *back = malloc(size + 1);
    char *stream = malloc(4 * size + 16);
    if (!ids || !back || !stream)
        abort();
    const int utf8 = valid_utf8(data, size);
    for (int k = 0; k < 2; k++) {
        for (int special = 0; special < 2; special++) {
            size_t n = 0;
            if (spk_tok_encode(g_tok[k], text, size, false, special, ids, cap, &n) != SPK_OK ||
                n > size)
                abort();
            for (size_t i = 0; i < n; i++) {
                size_t len = 0;
                if (!spk_tok_piece(g_tok[k], ids[i], false, &len) || len == 0)
                    abort();
            }
            size_t m = 0;
            if (spk_tok_decode(g_tok[k], ids, n, false, back, size + 1, &m) != SPK_OK ||
                m != size || memcmp(back, data, size) != 0)
                abort(); /* byte-level BPE: every byte has a token, so the round trip is exact */
            spk_tok_stream st;
            spk_tok_stream_init(&st, g_tok[k], false);
            size_t out = 0;
            for (size_t i = 0; i <= n; i++) {
                size_t got = 0;
                if (spk_tok_stream_push(&st, i < n ? ids[i] : -1, stream + out,
                                        4 * size + 16 - out, &got) != SPK_OK)
                    abort();
                out += got;
            }
            if (!valid_utf8((const uint8_t *)stream, out) ||
                (utf8 && (out != size || memcmp(stream, data, size) != 0)))
                abort();
        }
        /* With add_special, and with a buffer one id too small: TOO_LONG, never an overflow. */
        size_t n = 0;
        spk_status st = spk_tok_encode(g_tok[k], text, size, true, true, ids, cap, &n);
        if (st != SPK_OK || n > cap)
            abort();
        if (n > 0) {
            int32_t *small = malloc((n - 1 ? n - 1 : 1) * sizeof *small);
            size_t n2 = 0;
            if (!small ||
                spk_tok_encode(g_tok[k], text, size, true, true, small, n - 1, &n2) !=
                    SPK_ERR_TOO_LONG ||
                n2 != n)
                abort();
            free(small);
        }
    }
    free(ids);
    free(back);
    free(stream);
    return 0;
}

/*
 * libFuzzer target for the Hugging Face tokenizer-file reader (lib/model/hf_tok.c): the input is
 * up to three JSON documents separated by NUL bytes, read as tokenizer.json, tokenizer_config.json
 * and generation_config.json. Properties: spk_hf_tok_parse never crashes, leaks or reads out of
 * bounds; on success the spec is consistent (ids in range, texts present, eog ids sorted and in
 * range), and when spk_tok_new accepts it, encoding and decoding a few strings work.
 * Build: cmake -DSPK_FUZZ=ON -DCMAKE_C_COMPILER=clang; run: ./fuzz_hf_tok -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/hf_tok.h"
#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *part[3] = {NULL, NULL, NULL};
    size_t len[3] = {0, 0, 0};
    const char *p = (const char *)data, *end = p + size;
    for (int k = 0; k < 3 && p <= end; k++) {
        const char *z = memchr(p, '\0', (size_t)(end - p));
        part[k] = p;
        len[k] = z ? (size_t)(z - p) : (size_t)(end - p);
        if (!z)
            break;
        p = z + 1;
    }
    /* copies, so a read past a part's end is caught */
    char *buf[3] = {NULL, NULL, NULL};
    for (int k = 0; k < 3; k++) {
        if (!part[k])
            continue;
        buf[k] = malloc(len[k] ? len[k] : 1);
        check(buf[k] != NULL);
        memcpy(buf[k], part[k], len[k]);
    }
    spk_hf_tok hf;
    if (spk_hf_tok_parse("fuzz", buf[0], len[0], buf[1], len[1], buf[2], len[2], &hf) == SPK_OK) {
        const spk_tok_spec *s = &hf.spec;
        check(s->n_tokens > 0 && s->tokens && s->token_types && s->model && s->pre);
        for (size_t i = 0; i < s->n_tokens; i++)
            check(s->tokens[i].ptr && s->tokens[i].len > 0 && s->token_types[i] >= 0 && s->token_types[i] <= 6);
        for (size_t i = 0; i < s->n_merges; i++)
            check(s->merges[i].ptr && memchr(s->merges[i].ptr, ' ', s->merges[i].len));
        for (size_t i = 0; i < hf.n_eog; i++)
            check(hf.eog_ids[i] >= 0 && (size_t)hf.eog_ids[i] < s->n_tokens && (i == 0 || hf.eog_ids[i - 1] < hf.eog_ids[i]));
        check(s->bos >= -1 && s->bos < (int64_t)s->n_tokens && s->eos >= -1 && s->eos < (int64_t)s->n_tokens);
        spk_tok *tok = NULL;
        if (spk_tok_new(s, &tok) == SPK_OK) {
            static const char *const texts[] = {"Hello world 123", "ab ab<|end|>\n\n  x", "\xc3\xa9\xff\xe2\x96\x81"};
            for (size_t t = 0; t < 3; t++) {
                int32_t ids[256];
                char out[4096];
                size_t n = 0, got = 0;
                if (spk_tok_encode(tok, texts[t], strlen(texts[t]), true, true, ids, 256, &n) == SPK_OK)
                    (void)spk_tok_decode(tok, ids, n, false, out, sizeof out, &got);
            }
            spk_tok_free(tok);
        }
        spk_hf_tok_free(&hf);
    } else {
        check(hf.priv == NULL && hf.chat_template == NULL && hf.eog_ids == NULL);
    }
    for (int k = 0; k < 3; k++)
        free(buf[k]);
    return 0;
}

/*
 * Pre-tokenizers of the model families against llama.cpp, vocabulary by vocabulary
 * (tests/data/ref_tok_vocabs.json, made by tests/ref/gen-tok-vocabs.py): gpt-2, qwen2 and
 * llama-bpe on llama.cpp's vocab-only files and its own test strings (ids its test-tokenizer-0
 * asserts), plus gpt-4o and tekken (the same vocabularies read with those pre-tokenizers, ids
 * from llama-tokenize) when the reference holds them. The vocabulary files come from the llama.cpp
 * sources the reference harness unpacks ($SPK_CACHE/llamacpp/src/.../models, or
 * $SPK_LLAMACPP_MODELS); a vocabulary whose file is absent is skipped with a printed reason.
 * Also: an unknown pre-tokenizer name is a clear UNSUPPORTED.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "testutil.h"

static cJSON *g_ref;
static char *g_txt;

static void setup(void)
{
    size_t len;
    g_txt = spk_test_read_file(SPK_TEST_DATA_DIR "/ref_tok_vocabs.json", &len);
    ck_assert_ptr_nonnull(g_txt);
    g_ref = cJSON_Parse(g_txt);
    ck_assert_ptr_nonnull(g_ref);
}

static void teardown(void)
{
    cJSON_Delete(g_ref);
    free(g_txt);
}

static int compare_ids(const spk_tok *tok, const char *vocab, const char *text, cJSON *want, bool special)
{
    int32_t ids[2048];
    size_t n = 0;
    spk_status st = spk_tok_encode(tok, text, strlen(text), false, special, ids, 2048, &n);
    ck_assert_msg(st == SPK_OK, "%s: encode: %s", vocab, spk_last_error());
    const int nw = cJSON_GetArraySize(want);
    int same = (int)n == nw;
    for (int i = 0; same && i < nw; i++)
        same = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
    if (!same) {
        printf("MISMATCH %s%s %.60s: got %zu ids, want %d\n  got ", vocab, special ? " (special)" : "", text, n, nw);
        for (size_t i = 0; i < n && i < 32; i++)
            printf(" %d", ids[i]);
        printf("\n  want");
        for (int i = 0; i < nw && i < 32; i++)
            printf(" %d", cJSON_GetArrayItem(want, i)->valueint);
        printf("\n");
    }
    return same;
}

/* decode(encode(text)) is the text (SentencePiece: with the space it puts first). 1 if so. */
static int round_trip(const spk_tok *tok, const char *vocab, const char *text)
{
    int32_t ids[2048];
    size_t n = 0, got = 0, len = strlen(text);
    if (len == 0 || spk_tok_encode(tok, text, len, false, false, ids, 2048, &n) != SPK_OK)
        return len == 0;
    char buf[8192];
    ck_assert_int_eq(spk_tok_decode(tok, ids, n, false, buf, sizeof buf, &got), SPK_OK);
    const bool spm = spk_tok_n_vocab(tok) == 32000 && spk_tok_find(tok, "<0x41>", 6) >= 0;
    const char *want = text;
    char sp[4096];
    if (spm) {
        snprintf(sp, sizeof sp, " %s", text);
        want = sp;
    }
    if (got != strlen(want) || memcmp(buf, want, got) != 0) {
        printf("ROUND TRIP %s: '%.60s' decodes to '%.*s'\n", vocab, text, (int)(got > 60 ? 60 : got), buf);
        return 0;
    }
    return 1;
}

START_TEST(ids_match_llamacpp_per_vocabulary)
{
    cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItem(g_ref, "vocabs"), _i);
    if (!v) {
        printf("vocab %d: not in this reference\n", _i);
        return;
    }
    const char *name = cJSON_GetObjectItem(v, "name")->valuestring;
    const char *dir = spk_test_llamacpp_models_dir();
    char path[1200];
    if (dir)
        snprintf(path, sizeof path, "%s/%s", dir, cJSON_GetObjectItem(v, "file")->valuestring);
    if (!dir || access(path, R_OK) != 0) {
        printf("SKIP: %s: vocabulary file %s not found (run tests/ref/build-llamacpp.sh, or set "
               "SPK_LLAMACPP_MODELS to llama.cpp's models directory)\n",
               name, cJSON_GetObjectItem(v, "file")->valuestring);
        return;
    }
    cJSON *pre = cJSON_GetObjectItem(v, "pre");
    spk_gguf_file *f;
    spk_tok *tok;
    ck_assert_msg(spk_gguf_open(path, &f) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_tok_load_pre(f, 0, cJSON_IsString(pre) ? pre->valuestring : NULL, &tok) == SPK_OK, "%s: %s", name,
                  spk_last_error());
    int n = 0, ok = 0, n_rt = 0, n_cases = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(v, "cases"))
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        n++;
        n_cases++;
        ok += compare_ids(tok, name, text, cJSON_GetObjectItem(c, "ids"), false);
        n_rt += round_trip(tok, name, text);
        cJSON *sp = cJSON_GetObjectItem(c, "ids_special");
        if (sp) {
            n++;
            ok += compare_ids(tok, name, text, sp, true);
        }
    }
    printf("%s: %d/%d strings give llama.cpp's ids (%s); %d decode back to their text\n", name, ok, n,
           cJSON_GetObjectItem(v, "source")->valuestring, n_rt);
    ck_assert_int_eq(ok, n);
    ck_assert_int_eq(n_rt, n_cases);
    spk_tok_free(tok);
    spk_gguf_close(f);
}
END_TEST

START_TEST(unknown_pre_tokenizer_is_refused_by_name)
{
    static const char *const toks[] = {"a", "b", "ab"};
    spk_tok_spec spec;
    spk_tok_spec_init(&spec);
    spec.model = "gpt2";
    spec.pre = "qwen9-experimental";
    spec.n_tokens = 3;
    spk_tok_str ts[3];
    for (int i = 0; i < 3; i++)
        ts[i] = (spk_tok_str){toks[i], strlen(toks[i])};
    spec.tokens = ts;
    spk_tok *tok = NULL;
    ck_assert_int_eq(spk_tok_new(&spec, &tok), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(spk_last_error(), "'qwen9-experimental'") && strstr(spk_last_error(), "qwen2") &&
                      strstr(spk_last_error(), "tekken"),
                  "%s", spk_last_error());
    printf("refused as expected: %s\n", spk_last_error());
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer_vocabs");
    TCase *tc = tcase_create("vocabs");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, ids_match_llamacpp_per_vocabulary, 0, 8);
    tcase_add_test(tc, unknown_pre_tokenizer_is_refused_by_name);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}

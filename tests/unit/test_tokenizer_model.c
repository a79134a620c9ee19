/*
 * Tokenizer and chat template against the real SmolLM2 model and llama.cpp's reference output
 * (tests/data/ref_tokens.json, tests/data/ref_chat.json). Skips when the model is absent.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "testutil.h"

static spk_gguf_file *g_file;
static spk_tok *g_tok;

static void setup(void)
{
    const char *path = spk_test_model_path();
    ck_assert_ptr_nonnull(path);
    ck_assert_msg(spk_gguf_open(path, &g_file) == SPK_OK, "spk_gguf_open: %s", spk_err_msg());
    ck_assert_msg(spk_tok_load(g_file, 49152, &g_tok) == SPK_OK, "spk_tok_load: %s", spk_err_msg());
}

static void teardown(void)
{
    spk_tok_free(g_tok);
    spk_gguf_close(g_file);
    g_tok = NULL;
    g_file = NULL;
}

static cJSON *load_json(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", SPK_TEST_DATA_DIR, name);
    char *text = spk_test_read_file(path, NULL);
    if (!text)
        return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

/* Compare encode(text) with a JSON id array; print the first difference. */
static bool ids_match(const char *text, cJSON *want, bool parse_special, const char *label)
{
    size_t len = strlen(text), n = 0;
    int32_t ids[512];
    spk_status st = spk_tok_encode(g_tok, text, len, false, parse_special, ids, 512, &n);
    ck_assert_msg(st == SPK_OK, "encode: %s", spk_err_msg());
    int nw = cJSON_GetArraySize(want);
    bool same = (int)n == nw;
    for (int i = 0; same && i < nw; i++)
        same = ids[i] == (int32_t)cJSON_GetArrayItem(want, i)->valuedouble;
    if (!same) {
        printf("MISMATCH %s %s: got %zu ids, want %d:", label, parse_special ? "special" : "plain", n, nw);
        for (size_t i = 0; i < n && i < 24; i++)
            printf(" %d", ids[i]);
        printf(" | want:");
        for (int i = 0; i < nw && i < 24; i++)
            printf(" %d", (int)cJSON_GetArrayItem(want, i)->valuedouble);
        printf("\n");
    }
    return same;
}

START_TEST(test_metadata_bos_eos_and_eog)
{
    ck_assert_int_eq(spk_tok_n_vocab(g_tok), 49152);
    ck_assert_int_eq(spk_tok_bos(g_tok), 1);  /* <|im_start|> */
    ck_assert_int_eq(spk_tok_eos(g_tok), 2);  /* <|im_end|> */
    ck_assert(!spk_tok_add_bos(g_tok));       /* tokenizer.ggml.add_bos_token = false */
    ck_assert(spk_tok_is_eog(g_tok, 2));
    ck_assert(spk_tok_is_eog(g_tok, 0));      /* <|endoftext|> */
    ck_assert(!spk_tok_is_eog(g_tok, 1));
    ck_assert(!spk_tok_is_eog(g_tok, 19556)); /* "Hello" */
    ck_assert_int_eq(spk_tok_type(g_tok, 1), SPK_TOKTYPE_CONTROL);
}
END_TEST

START_TEST(test_ids_match_llama_cpp_reference)
{
    cJSON *ref = load_json("ref_tokens.json");
    if (!ref) {
        printf("SKIP (reference ids): tests/data/ref_tokens.json absent\n");
        return;
    }
    int total = cJSON_GetArraySize(ref), plain_ok = 0, special_ok = 0;
    for (int i = 0; i < total; i++) {
        cJSON *e = cJSON_GetArrayItem(ref, i);
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        char label[32];
        snprintf(label, sizeof label, "#%d", i);
        plain_ok += ids_match(text, cJSON_GetObjectItem(e, "ids"), false, label);
        special_ok += ids_match(text, cJSON_GetObjectItem(e, "ids_special"), true, label);
    }
    printf("reference strings: %d; exact match plain %d, parse_special %d\n", total, plain_ok,
           special_ok);
    cJSON_Delete(ref);
    ck_assert_int_gt(total, 0);
    ck_assert_int_eq(plain_ok, total);
    ck_assert_int_eq(special_ok, total);
}
END_TEST

START_TEST(test_detokenize_round_trips_reference_strings)
{
    cJSON *ref = load_json("ref_tokens.json");
    if (!ref) {
        printf("SKIP (round trip): tests/data/ref_tokens.json absent\n");
        return;
    }
    int total = cJSON_GetArraySize(ref);
    for (int i = 0; i < total; i++) {
        const char *text = cJSON_GetObjectItem(cJSON_GetArrayItem(ref, i), "text")->valuestring;
        for (int sp = 0; sp < 2; sp++) {
            size_t len = strlen(text), n, m;
            int32_t ids[512];
            char back[4096];
            ck_assert_int_eq(spk_tok_encode(g_tok, text, len, false, sp, ids, 512, &n), SPK_OK);
            ck_assert_int_eq(spk_tok_decode(g_tok, ids, n, false, back, sizeof back, &m), SPK_OK);
            ck_assert_msg(m == len && memcmp(back, text, len) == 0, "round trip of #%d failed", i);
            /* streaming gives the same bytes for valid UTF-8 input */
            spk_tok_stream s;
            spk_tok_stream_init(&s, g_tok, false);
            size_t o = 0;
            for (size_t k = 0; k <= n; k++) {
                size_t got;
                ck_assert_int_eq(spk_tok_stream_push(&s, k < n ? ids[k] : -1, back + o,
                                                     sizeof back - o, &got), SPK_OK);
                o += got;
            }
            ck_assert_msg(o == len && memcmp(back, text, len) == 0, "stream of #%d differs", i);
        }
    }
    cJSON_Delete(ref);
}
END_TEST

START_TEST(test_stream_holds_emoji_split_across_tokens)
{
    const char *text = "I \xe2\x9d\xa4\xef\xb8\x8f emoji \xf0\x9f\x98\x80\xf0\x9f\x8e\x89";
    int32_t ids[64];
    size_t n;
    ck_assert_int_eq(spk_tok_encode(g_tok, text, strlen(text), false, false, ids, 64, &n), SPK_OK);
    spk_tok_stream s;
    spk_tok_stream_init(&s, g_tok, false);
    char out[256];
    size_t o = 0;
    int held = 0;
    for (size_t k = 0; k < n; k++) {
        size_t pl, got;
        spk_tok_piece(g_tok, ids[k], false, &pl);
        ck_assert_int_eq(spk_tok_stream_push(&s, ids[k], out + o, sizeof out - o, &got), SPK_OK);
        held += got < pl;
        /* what has come out so far is always whole characters: a prefix of the text that
         * ends on a character boundary */
        ck_assert_mem_eq(out, text, o + got);
        ck_assert_msg(((uint8_t)text[o + got] & 0xC0) != 0x80, "output split a character");
        o += got;
    }
    ck_assert_msg(held > 0, "no token split a character; the test proves nothing");
    ck_assert_uint_eq(o, strlen(text));
}
END_TEST

START_TEST(test_chat_matches_reference_rendering)
{
    cJSON *ref = load_json("ref_chat.json");
    if (!ref) {
        printf("SKIP (chat): tests/data/ref_chat.json absent\n");
        return;
    }
    cJSON *cases = cJSON_GetObjectItem(ref, "cases");
    int nc = cJSON_GetArraySize(cases);
    for (int c = 0; c < nc; c++) {
        cJSON *cs = cJSON_GetArrayItem(cases, c);
        cJSON *msgs = cJSON_GetObjectItem(cs, "messages");
        int nm = cJSON_GetArraySize(msgs);
        spk_chat_message m[16];
        ck_assert_int_le(nm, 16);
        for (int i = 0; i < nm; i++) {
            cJSON *mi = cJSON_GetArrayItem(msgs, i);
            m[i].role = cJSON_GetObjectItem(mi, "role")->valuestring;
            m[i].content = cJSON_GetObjectItem(mi, "content")->valuestring;
        }
        bool add = cJSON_IsTrue(cJSON_GetObjectItem(cs, "add_generation_prompt"));
        char buf[4096];
        size_t n;
        ck_assert_int_eq(spk_chat_render(g_file, m, (size_t)nm, add, buf, sizeof buf, &n), SPK_OK);
        const char *want = cJSON_GetObjectItem(cs, "jinja")->valuestring;
        ck_assert_str_eq(buf, want);
        ck_assert_uint_eq(n, strlen(want));
        cJSON *wids = cJSON_GetObjectItem(cs, "jinja_ids_special");
        if (wids)
            ck_assert(ids_match(buf, wids, true, cJSON_GetObjectItem(cs, "name")->valuestring));
    }
    cJSON_Delete(ref);
}
END_TEST

START_TEST(test_special_text_parsed_only_on_request)
{
    const char *t = "<|im_start|>user\nhi<|im_end|>";
    int32_t ids[64];
    size_t n;
    ck_assert_int_eq(spk_tok_encode(g_tok, t, strlen(t), false, true, ids, 64, &n), SPK_OK);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[n - 1], 2);
    ck_assert_int_eq(spk_tok_encode(g_tok, t, strlen(t), false, false, ids, 64, &n), SPK_OK);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_gt(ids[i], 16); /* no special token at all */
    char out[64];
    int32_t sp[] = {1, 4093, 2};
    ck_assert_int_eq(spk_tok_decode(g_tok, sp, 3, true, out, sizeof out, &n), SPK_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(out, "user", 4);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("tokenizer_model");
    TCase *tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_metadata_bos_eos_and_eog);
    tcase_add_test(tc, test_ids_match_llama_cpp_reference);
    tcase_add_test(tc, test_detokenize_round_trips_reference_strings);
    tcase_add_test(tc, test_stream_holds_emoji_split_across_tokens);
    tcase_add_test(tc, test_chat_matches_reference_rendering);
    tcase_add_test(tc, test_special_text_parsed_only_on_request);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (!spk_test_model_path())
        spk_test_skip("default model not found (set SPK_TEST_MODEL)");
    return spk_test_run(suite());
}

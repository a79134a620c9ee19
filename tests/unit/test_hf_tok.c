/*
 * Hugging Face tokenizer files (lib/model/hf_tok.c) -> our tokenizer.
 *
 * Reference part (needs SPK_HF_TOK_DIR, set by tests/sh/hf_tok.sh, which makes the directories with
 * tests/ref/gen-hf-tok.py from llama.cpp's vocab GGUFs and checks that the `tokenizers` library
 * still gives the committed ids): for each family (Llama 3, Qwen2, GPT-2, SmolLM, GPT-4o, Tekken,
 * Llama 2 SentencePiece), spk_hf_tok_read -> spk_tok_new gives exactly the `tokenizers` ids of
 * tests/data/ref_hf_tok.json (add_special_tokens false and true), the same ids as our GGUF path on
 * the GGUF file the directory was made from, decodes back to the text, has the bos/eos/eog ids
 * and add_bos of the files, gives the same ids when the files sit in a model directory opened with
 * spk_gguf_open(dir) + spk_tok_load (model/hf.c's tokenizer.ggml.* keys), and the chat template
 * is the family's template byte for byte and is recognised by chat.c as that family. Without
 * SPK_HF_TOK_DIR that part prints SKIP.
 *
 * Always: a tiny in-memory tokenizer works end to end (both merge forms, eog list), and malformed
 * files give the expected status with a message naming the file and the item.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/hf_tok.h"
#include "model/tokenizer.h"
#include "testutil.h"

static cJSON *g_ref;
static char *g_txt;

static void setup(void)
{
    size_t len;
    g_txt = spk_test_read_file(SPK_TEST_DATA_DIR "/ref_hf_tok.json", &len);
    ck_assert_ptr_nonnull(g_txt);
    g_ref = cJSON_Parse(g_txt);
    ck_assert_ptr_nonnull(g_ref);
}

static void teardown(void)
{
    cJSON_Delete(g_ref);
    free(g_txt);
}

static bool ids_equal(const int32_t *got, size_t n, const cJSON *want)
{
    if ((int)n != cJSON_GetArraySize(want))
        return false;
    size_t i = 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, want)
    {
        if (got[i++] != w->valueint)
            return false;
    }
    return true;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    printf("  %s", what);
    for (size_t i = 0; i < n && i < 24; i++)
        printf(" %d", ids[i]);
    printf("%s\n", n > 24 ? " ..." : "");
}

static spk_chat_kind kind_of(const char *name)
{
    if (!name)
        return SPK_CHAT_UNKNOWN;
    if (!strcmp(name, "chatml"))
        return SPK_CHAT_CHATML;
    if (!strcmp(name, "llama3"))
        return SPK_CHAT_LLAMA3;
    if (!strcmp(name, "qwen3"))
        return SPK_CHAT_QWEN3;
    if (!strcmp(name, "mistral-v7"))
        return SPK_CHAT_MISTRAL_V7;
    return SPK_CHAT_UNKNOWN;
}


/* ---- the spec as GGUF tokenizer.ggml.* keys (what the safetensors loader's in-memory GGUF holds,
 * per hf_tok.h), written by a tiny writer and read back by our GGUF path ----------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void w_raw(wbuf *w, const void *d, size_t n)
{
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->n + n)
            cap *= 2;
        w->p = realloc(w->p, cap);
        ck_assert_ptr_nonnull(w->p);
        w->cap = cap;
    }
    if (n)
        memcpy(w->p + w->n, d, n);
    w->n += n;
}

static void w_le(wbuf *w, uint64_t v, unsigned n)
{
    uint8_t b[8];
    for (unsigned i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    w_raw(w, b, n);
}

static void w_strn(wbuf *w, const char *s, size_t n)
{
    w_le(w, n, 8);
    w_raw(w, s, n);
}

static void w_key(wbuf *w, const char *k, uint32_t type)
{
    w_strn(w, k, strlen(k));
    w_le(w, type, 4);
}

enum { T_I32 = 5, T_BOOL = 7, T_STR = 8, T_ARR = 9, T_F32 = 6 };

/* GGUF bytes holding `spec` (+ `eog`, n_eog) as tokenizer.ggml.* keys; *n_kv_out for the header. */
static wbuf spec_to_gguf(const spk_tok_spec *spec, const int32_t *eog, size_t n_eog)
{
    wbuf w = {0};
    uint64_t nkv = 0;
    w_raw(&w, "GGUF", 4);
    w_le(&w, 3, 4);
    w_le(&w, 0, 8);
    size_t kv_at = w.n;
    w_le(&w, 0, 8);
    w_key(&w, "general.architecture", T_STR), w_strn(&w, "llama", 5), nkv++;
    w_key(&w, "tokenizer.ggml.model", T_STR), w_strn(&w, spec->model, strlen(spec->model)), nkv++;
    w_key(&w, "tokenizer.ggml.pre", T_STR), w_strn(&w, spec->pre, strlen(spec->pre)), nkv++;
    w_key(&w, "tokenizer.ggml.tokens", T_ARR), w_le(&w, T_STR, 4), w_le(&w, spec->n_tokens, 8), nkv++;
    for (size_t i = 0; i < spec->n_tokens; i++)
        w_strn(&w, spec->tokens[i].ptr, spec->tokens[i].len);
    w_key(&w, "tokenizer.ggml.token_type", T_ARR), w_le(&w, T_I32, 4), w_le(&w, spec->n_tokens, 8), nkv++;
    for (size_t i = 0; i < spec->n_tokens; i++)
        w_le(&w, (uint32_t)spec->token_types[i], 4);
    if (spec->n_merges) {
        w_key(&w, "tokenizer.ggml.merges", T_ARR), w_le(&w, T_STR, 4), w_le(&w, spec->n_merges, 8), nkv++;
        for (size_t i = 0; i < spec->n_merges; i++)
            w_strn(&w, spec->merges[i].ptr, spec->merges[i].len);
    }
    if (spec->scores) {
        w_key(&w, "tokenizer.ggml.scores", T_ARR), w_le(&w, T_F32, 4), w_le(&w, spec->n_tokens, 8), nkv++;
        for (size_t i = 0; i < spec->n_tokens; i++) {
            uint32_t b;
            memcpy(&b, &spec->scores[i], 4);
            w_le(&w, b, 4);
        }
    }
    const struct {
        const char *key;
        int32_t v;
    } ids[] = {{"tokenizer.ggml.bos_token_id", spec->bos}, {"tokenizer.ggml.eos_token_id", spec->eos},
               {"tokenizer.ggml.eot_token_id", spec->eot}, {"tokenizer.ggml.eom_token_id", spec->eom}};
    for (size_t i = 0; i < 4; i++)
        if (ids[i].v >= 0)
            w_key(&w, ids[i].key, T_I32), w_le(&w, (uint32_t)ids[i].v, 4), nkv++;
    if (spec->add_bos >= 0)
        w_key(&w, "tokenizer.ggml.add_bos_token", T_BOOL), w_le(&w, (unsigned)spec->add_bos, 1), nkv++;
    if (spec->add_eos >= 0)
        w_key(&w, "tokenizer.ggml.add_eos_token", T_BOOL), w_le(&w, (unsigned)spec->add_eos, 1), nkv++;
    if (spec->add_space_prefix >= 0 && !strcmp(spec->model, "llama"))
        w_key(&w, "tokenizer.ggml.add_space_prefix", T_BOOL), w_le(&w, (unsigned)spec->add_space_prefix, 1), nkv++;
    if (spec->spm_prefix_mode)
        w_key(&w, "tokenizer.ggml.spm_prefix_mode", T_I32), w_le(&w, (uint32_t)spec->spm_prefix_mode, 4), nkv++;
    if (eog) {
        w_key(&w, "tokenizer.ggml.eog_token_ids", T_ARR), w_le(&w, T_I32, 4), w_le(&w, n_eog, 8), nkv++;
        for (size_t i = 0; i < n_eog; i++)
            w_le(&w, (uint32_t)eog[i], 4);
    }
    for (unsigned i = 0; i < 8; i++)
        w.p[kv_at + i] = (uint8_t)(nkv >> (8 * i));
    return w;
}

#define MAXIDS 4096

START_TEST(family_matches_tokenizers)
{
    cJSON *fams = cJSON_GetObjectItem(g_ref, "families");
    cJSON *fam = cJSON_GetArrayItem(fams, _i);
    if (!fam) {
        printf("family %d: not in this reference\n", _i);
        return;
    }
    const char *name = fam->string;
    const char *root = getenv("SPK_HF_TOK_DIR");
    const char *models = spk_test_llamacpp_models_dir();
    if (!root || !*root || !models) {
        printf("SKIP: %s: %s (tests/sh/hf_tok.sh makes the tokenizer directories from llama.cpp's vocab files and "
               "sets SPK_HF_TOK_DIR)\n", name, !models ? "llama.cpp models directory not found" : "SPK_HF_TOK_DIR not set");
        return;
    }
    char dir[1200], path[1400];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    snprintf(path, sizeof path, "%s/family.json", dir);
    size_t flen;
    char *ftxt = spk_test_read_file(path, &flen);
    ck_assert_msg(ftxt != NULL, "%s missing", path);
    cJSON *meta = cJSON_Parse(ftxt);
    ck_assert_ptr_nonnull(meta);

    spk_hf_tok hf;
    ck_assert_msg(spk_hf_tok_read(dir, &hf) == SPK_OK, "%s: %s", name, spk_last_error());
    spk_tok *tok = NULL;
    ck_assert_msg(spk_tok_new(&hf.spec, &tok) == SPK_OK, "%s: spk_tok_new: %s", name, spk_last_error());

    /* the GGUF the directory was made from, through our GGUF path */
    snprintf(path, sizeof path, "%s/%s", models, cJSON_GetObjectItem(meta, "gguf")->valuestring);
    spk_gguf_file *f = NULL;
    spk_tok *gtok = NULL;
    ck_assert_msg(spk_gguf_open(path, &f) == SPK_OK, "%s", spk_last_error());
    cJSON *pre = cJSON_GetObjectItem(meta, "pre");
    ck_assert_msg(spk_tok_load_pre(f, 0, cJSON_IsString(pre) ? pre->valuestring : NULL, &gtok) == SPK_OK, "%s: %s",
                  name, spk_last_error());
    if (cJSON_IsString(pre))
        ck_assert_str_eq(hf.spec.pre, pre->valuestring);
    ck_assert_int_eq(spk_tok_n_vocab(tok), spk_tok_n_vocab(gtok));
    /* the spec through tokenizer.ggml.* keys, as the safetensors loader carries it */
    wbuf gw = spec_to_gguf(&hf.spec, hf.eog_ids, hf.n_eog);
    spk_gguf_file *rf = NULL;
    spk_tok *rtok = NULL;
    ck_assert_msg(spk_gguf_open_memory(gw.p, gw.n, &rf) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_tok_load(rf, 0, &rtok) == SPK_OK, "%s: spec as GGUF: %s", name, spk_last_error());

    static int32_t ids[MAXIDS], gids[MAXIDS];
    static char buf[16384];
    cJSON *texts = cJSON_GetObjectItem(g_ref, "texts");
    cJSON *want = cJSON_GetObjectItem(fam, "ids");
    cJSON *want_bos = cJSON_GetObjectItem(fam, "ids_add_special");
    cJSON *hf_rt = cJSON_GetObjectItem(fam, "hf_round_trip");
    int n_txt = cJSON_GetArraySize(texts), ok = 0, ok_gguf = 0, ok_spec_gguf = 0, ok_rt = 0, n_rt = 0, ok_bos = 0;
    const bool spm = !strcmp(hf.spec.model, "llama");
    for (int t = 0; t < n_txt; t++) {
        const char *text = cJSON_GetArrayItem(texts, t)->valuestring;
        size_t len = strlen(text), n = 0, gn = 0, got = 0;
        ck_assert_int_eq(spk_tok_encode(tok, text, len, false, true, ids, MAXIDS, &n), SPK_OK);
        ck_assert_int_eq(spk_tok_encode(gtok, text, len, false, true, gids, MAXIDS, &gn), SPK_OK);
        if (ids_equal(ids, n, cJSON_GetArrayItem(want, t))) {
            ok++;
        } else {
            printf("MISMATCH %s vs tokenizers: '%.60s'\n", name, text);
            print_ids("ours      ", ids, n);
            int32_t w[MAXIDS];
            size_t nw = 0;
            const cJSON *x;
            cJSON_ArrayForEach(x, cJSON_GetArrayItem(want, t)) w[nw++] = x->valueint;
            print_ids("tokenizers", w, nw);
        }
        if (gn == n && memcmp(gids, ids, n * sizeof *ids) == 0)
            ok_gguf++;
        else if (!cJSON_IsFalse(cJSON_GetObjectItem(meta, "gguf_same_ids")))
            printf("MISMATCH %s vs our GGUF path: '%.60s'\n", name, text);
        ck_assert_int_eq(spk_tok_encode(rtok, text, len, true, true, gids, MAXIDS, &gn), SPK_OK);
        ck_assert_int_eq(spk_tok_encode(tok, text, len, true, true, ids, MAXIDS, &n), SPK_OK);
        if (gn == n && memcmp(gids, ids, n * sizeof *ids) == 0)
            ok_spec_gguf++;
        ck_assert_int_eq(spk_tok_encode(tok, text, len, false, true, ids, MAXIDS, &n), SPK_OK);
        if (cJSON_IsTrue(cJSON_GetArrayItem(hf_rt, t))) {
            n_rt++;
            ck_assert_int_eq(spk_tok_decode(tok, ids, n, false, buf, sizeof buf, &got), SPK_OK);
            /* SentencePiece: our decode keeps the space the tokenizer put first (HF's Strip drops it) */
            const char *d = buf;
            if (spm && got > 0 && buf[0] == ' ' && len > 0) {
                d++;
                got--;
            }
            if (got == len && memcmp(d, text, len) == 0)
                ok_rt++;
            else
                printf("ROUND TRIP %s: '%.60s' decodes to '%.*s'\n", name, text, (int)(got > 60 ? 60 : got), d);
        }
        cJSON *wb = cJSON_GetArrayItem(want_bos, t);
        if (wb) {
            ck_assert_int_eq(spk_tok_encode(tok, text, len, true, true, ids, MAXIDS, &n), SPK_OK);
            if (ids_equal(ids, n, wb))
                ok_bos++;
            else
                printf("MISMATCH %s add_special vs tokenizers: '%.60s'\n", name, text);
        }
    }
    printf("%s: %d/%d strings give the tokenizers ids, %d/%d with add_special, %d/%d our GGUF path's ids, "
           "%d/%d decode back\n", name, ok, n_txt, ok_bos, cJSON_GetArraySize(want_bos), ok_gguf, n_txt, ok_rt, n_rt);
    ck_assert_int_eq(ok, n_txt);
    ck_assert_int_eq(ok_bos, cJSON_GetArraySize(want_bos));
    if (cJSON_IsFalse(cJSON_GetObjectItem(meta, "gguf_same_ids")))
        printf("%s: the llama.cpp GGUF places SentencePiece's space prefix differently (expected; HF Metaspace)\n", name);
    else
        ck_assert_int_eq(ok_gguf, n_txt);
    ck_assert_int_eq(ok_rt, n_rt);
    ck_assert_int_eq(ok_spec_gguf, n_txt);
    for (int32_t id = 0; id < spk_tok_n_vocab(tok); id++)
        ck_assert_int_eq(spk_tok_is_eog(rtok, id), spk_tok_is_eog(tok, id));
    ck_assert_int_eq(spk_tok_bos(rtok), spk_tok_bos(tok));
    ck_assert_int_eq(spk_tok_eos(rtok), spk_tok_eos(tok));
    ck_assert_int_eq(spk_tok_add_bos(rtok), spk_tok_add_bos(tok));
    printf("%s: the spec written as tokenizer.ggml.* keys and read by spk_tok_load gives the same tokenizer "
           "(ids with add_special, eog set, bos/eos)\n", name);
    spk_tok_free(rtok);
    spk_gguf_close(rf);
    free(gw.p);

    /* a model directory with this family's tokenizer files (and the weights of hf_tiny.py's
     * llama-f32): spk_gguf_open(dir) + spk_tok_load give the ids of spk_hf_tok_read + spk_tok_new
     * (e.g. Metaspace's space placement, tokenizer.ggml.spm_prefix_mode, survives the directory) */
    char mdir[] = "/tmp/spk-test-hftok-model.XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(mdir));
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "python3 %s/../ref/hf_tiny.py %s llama-f32 >/dev/null && cp %s/*.json %s/*.jinja %s/llama-f32/ 2>/dev/null; "
             "test -f %s/llama-f32/model.safetensors && cp %s/tokenizer.json %s/llama-f32/",
             SPK_TEST_DATA_DIR, mdir, dir, dir, mdir, mdir, dir, mdir);
    ck_assert_msg(system(cmd) == 0, "%s: could not make a model directory (%s)", name, cmd);
    snprintf(path, sizeof path, "%s/llama-f32", mdir);
    spk_gguf_file *df = NULL;
    spk_tok *dtok = NULL;
    ck_assert_msg(spk_gguf_open(path, &df) == SPK_OK, "%s: %s", name, spk_last_error());
    ck_assert_msg(spk_tok_load(df, 0, &dtok) == SPK_OK, "%s: the directory's tokenizer: %s", name, spk_last_error());
    int ok_dir = 0;
    for (int t = 0; t < n_txt; t++) {
        const char *text = cJSON_GetArrayItem(texts, t)->valuestring;
        size_t len = strlen(text), n = 0, gn = 0;
        int same = 1;
        for (int sp = 0; sp < 2; sp++) {
            ck_assert_int_eq(spk_tok_encode(dtok, text, len, sp, true, gids, MAXIDS, &gn), SPK_OK);
            ck_assert_int_eq(spk_tok_encode(tok, text, len, sp, true, ids, MAXIDS, &n), SPK_OK);
            same &= gn == n && memcmp(gids, ids, n * sizeof *ids) == 0;
        }
        if (same)
            ok_dir++;
        else
            printf("MISMATCH %s through a model directory: '%.60s'\n", name, text);
    }
    for (int32_t id = 0; id < spk_tok_n_vocab(tok); id++)
        ck_assert_int_eq(spk_tok_is_eog(dtok, id), spk_tok_is_eog(tok, id));
    ck_assert_int_eq(spk_tok_n_vocab(dtok), spk_tok_n_vocab(tok));
    ck_assert_int_eq(spk_tok_bos(dtok), spk_tok_bos(tok));
    ck_assert_int_eq(spk_tok_eos(dtok), spk_tok_eos(tok));
    ck_assert_int_eq(spk_tok_add_bos(dtok), spk_tok_add_bos(tok));
    printf("%s: %d/%d strings give the same ids through a model directory (spk_gguf_open(dir) + spk_tok_load)%s\n",
           name, ok_dir, n_txt, hf.spec.spm_prefix_mode ? ", with tokenizer.ggml.spm_prefix_mode" : "");
    ck_assert_int_eq(ok_dir, n_txt);
    spk_tok_free(dtok);
    spk_gguf_close(df);
    snprintf(cmd, sizeof cmd, "rm -rf %s", mdir);
    ck_assert_int_eq(system(cmd), 0);

    /* special ids, add_bos, end of generation */
    ck_assert_int_eq(spk_tok_bos(tok), cJSON_GetObjectItem(meta, "bos")->valueint);
    ck_assert_int_eq(spk_tok_eos(tok), cJSON_GetObjectItem(meta, "eos")->valueint);
    ck_assert_int_eq(spk_tok_add_bos(tok), cJSON_IsTrue(cJSON_GetObjectItem(meta, "add_bos")));
    const cJSON *e;
    size_t k = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(meta, "eog"))
    {
        ck_assert_msg(spk_tok_is_eog(tok, e->valueint), "%s: id %d is not end-of-generation", name, e->valueint);
        ck_assert_uint_lt(k, hf.n_eog);
        ck_assert_int_eq(hf.eog_ids[k++], e->valueint);
    }
    ck_assert_uint_eq(k, hf.n_eog);
    ck_assert(!spk_tok_is_eog(tok, 0));

    /* chat template: the family's text, recognised as that family */
    cJSON *tmpl = cJSON_GetObjectItem(meta, "template");
    if (cJSON_IsString(tmpl)) {
        snprintf(path, sizeof path, "%s/templates/%s", models, tmpl->valuestring);
        size_t tl;
        char *tt = spk_test_read_file(path, &tl);
        ck_assert_ptr_nonnull(tt);
        ck_assert_ptr_nonnull(hf.chat_template);
        ck_assert_msg(strlen(hf.chat_template) == tl && memcmp(hf.chat_template, tt, tl) == 0,
                      "%s: chat template differs from %s", name, path);
        spk_chat_kind kind = spk_chat_detect(hf.chat_template, strlen(hf.chat_template));
        ck_assert_int_eq(kind, kind_of(cJSON_GetObjectItem(meta, "chat")->valuestring));
        ck_assert_int_eq(kind, spk_chat_detect(tt, tl));
        printf("%s: chat template %s recognised as kind %d\n", name, tmpl->valuestring, kind);
        free(tt);
    } else {
        ck_assert_ptr_null(hf.chat_template);
    }
    spk_tok_free(gtok);
    spk_gguf_close(f);
    spk_tok_free(tok);
    spk_hf_tok_free(&hf);
    cJSON_Delete(meta);
    free(ftxt);
}
END_TEST

/* ---- in-memory files ------------------------------------------------------------------------ */

/* A byte-level tokenizer.json over a vocabulary of a few tokens; %s slots: vocab extra, merges,
 * added tokens, pre_tokenizer, normalizer. */
static char *mk_json(const char *vocab_extra, const char *merges, const char *added, const char *pre, const char *norm)
{
    static const char fmt[] =
        "{\"version\":\"1.0\",\"added_tokens\":[%s],\"normalizer\":%s,"
        "\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,\"\\u0120ab\":4%s},"
        "\"merges\":[%s]}}";
    size_t n = sizeof fmt + strlen(vocab_extra) + strlen(merges) + strlen(added) + strlen(pre) + strlen(norm);
    char *s = malloc(n);
    ck_assert_ptr_nonnull(s);
    snprintf(s, n, fmt, added, norm, pre, vocab_extra, merges);
    return s;
}

static const char k_bl[] = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}";
static const char k_added[] = "{\"id\":5,\"content\":\"<|end|>\",\"special\":true},"
                              "{\"id\":6,\"content\":\"<x>\",\"special\":false}";

static spk_status parse3(const char *tj, const char *cfg, const char *gen, spk_hf_tok *out)
{
    return spk_hf_tok_parse("mem", tj, strlen(tj), cfg, cfg ? strlen(cfg) : 0, gen, gen ? strlen(gen) : 0, out);
}

START_TEST(tiny_tokenizer_end_to_end)
{
    /* both merge forms give the same tokenizer */
    const char *forms[2] = {"\"a b\",\"\\u0120 ab\"", "[\"a\",\"b\"],[\"\\u0120\",\"ab\"]"};
    for (int fi = 0; fi < 2; fi++) {
        char *tj = mk_json("", forms[fi], k_added, k_bl, "null");
        spk_hf_tok hf;
        ck_assert_msg(parse3(tj, "{\"eos_token\":\"<|end|>\",\"chat_template\":\"{{ x }}\"}",
                             "{\"eos_token_id\":[5,1],\"bos_token_id\":null}", &hf) == SPK_OK, "%s", spk_last_error());
        ck_assert_str_eq(hf.spec.model, "gpt2");
        ck_assert_str_eq(hf.spec.pre, "gpt-2");
        ck_assert_uint_eq(hf.spec.n_tokens, 7);
        ck_assert_uint_eq(hf.spec.n_merges, 2);
        ck_assert_int_eq(hf.spec.token_types[5], SPK_TOKTYPE_CONTROL);
        ck_assert_int_eq(hf.spec.token_types[6], SPK_TOKTYPE_USER_DEFINED);
        ck_assert_int_eq(hf.spec.eos, 5);
        ck_assert_int_eq(hf.spec.bos, -1);
        ck_assert_str_eq(hf.chat_template, "{{ x }}");
        ck_assert_uint_eq(hf.n_eog, 2);
        ck_assert_int_eq(hf.eog_ids[0], 1);
        ck_assert_int_eq(hf.eog_ids[1], 5);
        spk_tok *tok;
        ck_assert_msg(spk_tok_new(&hf.spec, &tok) == SPK_OK, "%s", spk_last_error());
        int32_t ids[16];
        size_t n;
        ck_assert_int_eq(spk_tok_encode(tok, "ab ab<|end|><x>", 15, false, true, ids, 16, &n), SPK_OK);
        ck_assert_uint_eq(n, 4);
        ck_assert_int_eq(ids[0], 2);
        ck_assert_int_eq(ids[1], 4);
        ck_assert_int_eq(ids[2], 5);
        ck_assert_int_eq(ids[3], 6);
        ck_assert(spk_tok_is_eog(tok, 1)); /* from generation_config's list only */
        ck_assert(spk_tok_is_eog(tok, 5));
        ck_assert(!spk_tok_is_eog(tok, 2));
        spk_tok_free(tok);
        /* GGUF: tokenizer.ggml.eog_token_ids carries the list; out of range is a clear error */
        wbuf gw = spec_to_gguf(&hf.spec, hf.eog_ids, hf.n_eog);
        spk_gguf_file *gf;
        ck_assert_int_eq(spk_gguf_open_memory(gw.p, gw.n, &gf), SPK_OK);
        ck_assert_msg(spk_tok_load(gf, 0, &tok) == SPK_OK, "%s", spk_last_error());
        ck_assert(spk_tok_is_eog(tok, 1) && spk_tok_is_eog(tok, 5) && !spk_tok_is_eog(tok, 2));
        spk_tok_free(tok);
        spk_gguf_close(gf);
        free(gw.p);
        const int32_t bad[2] = {5, 7};
        gw = spec_to_gguf(&hf.spec, bad, 2);
        ck_assert_int_eq(spk_gguf_open_memory(gw.p, gw.n, &gf), SPK_OK);
        ck_assert_int_eq(spk_tok_load(gf, 0, &tok), SPK_ERR_FORMAT);
        ck_assert_msg(strstr(spk_last_error(), "end-of-generation id 7"), "%s", spk_last_error());
        spk_gguf_close(gf);
        free(gw.p);
        spk_hf_tok_free(&hf);
        spk_hf_tok_free(&hf); /* harmless twice */
        free(tj);
    }
}
END_TEST

/* A TemplateProcessing that adds a bos and an eos: those are what encode adds, and a different
 * tokenizer_config eos still ends generation. */
START_TEST(post_processor_tokens_win)
{
    static const char tj[] =
        "{\"added_tokens\":[{\"id\":5,\"content\":\"<s>\",\"special\":true},{\"id\":6,\"content\":\"</s>\",\"special\":true},"
        "{\"id\":7,\"content\":\"<|end|>\",\"special\":true}],\"normalizer\":null,"
        "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
        "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"</s>\",\"type_id\":0}}]},"
        "\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,\"\\u0120ab\":4},\"merges\":[\"a b\"]}}";
    spk_hf_tok hf;
    ck_assert_msg(parse3(tj, "{\"bos_token\":\"<|end|>\",\"eos_token\":\"<|end|>\",\"add_bos_token\":false}", NULL, &hf) ==
                      SPK_OK, "%s", spk_last_error());
    ck_assert_int_eq(hf.spec.bos, 5);
    ck_assert_int_eq(hf.spec.eos, 6);
    ck_assert_int_eq(hf.spec.add_bos, 1);
    ck_assert_int_eq(hf.spec.add_eos, 1);
    ck_assert_uint_eq(hf.n_eog, 2); /* the post-processor's eos and tokenizer_config's */
    ck_assert_int_eq(hf.eog_ids[0], 6);
    ck_assert_int_eq(hf.eog_ids[1], 7);
    spk_tok *tok;
    ck_assert_msg(spk_tok_new(&hf.spec, &tok) == SPK_OK, "%s", spk_last_error());
    int32_t ids[8];
    size_t n;
    ck_assert_int_eq(spk_tok_encode(tok, "ab", 2, true, true, ids, 8, &n), SPK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], 5);
    ck_assert_int_eq(ids[1], 2);
    ck_assert_int_eq(ids[2], 6);
    ck_assert(spk_tok_is_eog(tok, 7) && spk_tok_is_eog(tok, 6));
    spk_tok_free(tok);
    spk_hf_tok_free(&hf);
}
END_TEST

/* Expect status `want` and every needle in the message. */
static void expect_err(const char *tj, const char *cfg, const char *gen, spk_status want, const char *n1,
                       const char *n2)
{
    spk_hf_tok hf;
    spk_status st = parse3(tj, cfg, gen, &hf);
    if (st == SPK_OK) { /* some errors surface when the tokenizer is built */
        spk_tok *tok = NULL;
        st = spk_tok_new(&hf.spec, &tok);
        spk_tok_free(tok);
        spk_hf_tok_free(&hf);
    }
    const char *m = spk_last_error();
    ck_assert_msg(st == want, "status %d, want %d (%s)", st, want, m);
    ck_assert_msg(!n1 || strstr(m, n1), "message '%s' lacks '%s'", m, n1);
    ck_assert_msg(!n2 || strstr(m, n2), "message '%s' lacks '%s'", m, n2);
    ck_assert_ptr_null(hf.priv);
    printf("refused as expected: %s\n", m);
}

START_TEST(malformed_files_give_clear_errors)
{
    char *tj;
    expect_err("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", NULL, NULL, SPK_ERR_FORMAT, "tokenizer.json",
               "not valid JSON");
    expect_err("[1,2]", NULL, NULL, SPK_ERR_FORMAT, "tokenizer.json", "not a JSON object");
    expect_err("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", NULL, NULL, SPK_ERR_UNSUPPORTED, "WordPiece", NULL);
    /* tokenizer.json variants: mk_json(vocab_extra, merges, added, pre, norm), then the error */
    static const struct {
        const char *vocab, *merges, *added, *pre, *norm;
        spk_status want;
        const char *n1, *n2;
    } bad[] = {
        /* a merge naming an unknown token */
        {"", "\"a zz\"", "", k_bl, "null", SPK_ERR_FORMAT, "tokenizer.json: merge 0", "unknown token 'zz'"},
        {",\"bb\":5", "\"ab b\"", "", k_bl, "null", SPK_ERR_FORMAT, "makes 'abb', which is not a token", NULL},
        {"", "\"ab\"", "", k_bl, "null", SPK_ERR_FORMAT, "merge 0", "'left right'"},
        {"", "7", "", k_bl, "null", SPK_ERR_FORMAT, "merge 0", NULL},
        {"", "[\"a b\",\"c\"]", "", k_bl, "null", SPK_ERR_UNSUPPORTED, "merge 0", "space"},
        /* duplicate ids, a gap, an id far out of range, a non-integer id */
        {",\"c\":2", "", "", k_bl, "null", SPK_ERR_FORMAT, "id 2 to two tokens", NULL},
        {",\"c\":6", "", "", k_bl, "null", SPK_ERR_FORMAT, "model.vocab['c'] is 6", NULL},
        {",\"c\":1e300", "", "", k_bl, "null", SPK_ERR_FORMAT, "model.vocab['c']", NULL},
        {",\"c\":5.5", "", "", k_bl, "null", SPK_ERR_FORMAT, "model.vocab['c']", "not an integer"},
        {",\"c\":\"5\"", "", "", k_bl, "null", SPK_ERR_FORMAT, "model.vocab['c'] is not a number", NULL},
        /* a duplicate key (the same text twice) */
        {",\"ab\":5", "", "", k_bl, "null", SPK_ERR_FORMAT, "token 'ab' has two ids", NULL},
        /* added tokens: gap, the same id twice, strip flags */
        {"", "", "{\"id\":6,\"content\":\"<y>\",\"special\":true},{\"id\":0,\"content\":\"<z>\"}", k_bl, "null",
         SPK_ERR_FORMAT, "no token has id 5", NULL},
        {"", "", "{\"id\":5,\"content\":\"<y>\"},{\"id\":5,\"content\":\"<z>\"}", k_bl, "null", SPK_ERR_FORMAT,
         "id 5 twice", "'<z>'"},
        {"", "", "{\"id\":5,\"content\":\"<y>\",\"lstrip\":true}", k_bl, "null", SPK_ERR_UNSUPPORTED, "'<y>'",
         "lstrip"},
        /* a huge token (a 70000-byte name, built in the loop) */
        {NULL, "", "", k_bl, "null", SPK_ERR_FORMAT, "70000 bytes long", "limit 65536"},
        /* pre-tokenizer, normalizer, decoder we do not implement */
        {"", "", "",
         "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+|\\\\s\"},"
         "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"use_regex\":false}]}",
         "null", SPK_ERR_UNSUPPORTED, "regex '\\w+|\\s'", "not one we know"},
        {"", "", "", "{\"type\":\"Whitespace\"}", "null", SPK_ERR_UNSUPPORTED, "Whitespace", NULL},
        {"", "", "", k_bl, "{\"type\":\"NFKC\"}", SPK_ERR_UNSUPPORTED, "normalizer 'NFKC'", NULL},
        {"", "", "", k_bl, "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"Lowercase\"}]}",
         SPK_ERR_UNSUPPORTED, "normalizer", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *extra = NULL;
        if (!bad[i].vocab) {
            size_t big = 70000;
            extra = malloc(big + 32);
            ck_assert_ptr_nonnull(extra);
            strcpy(extra, ",\"");
            memset(extra + 2, 'x', big);
            strcpy(extra + 2 + big, "\":5");
        }
        tj = mk_json(extra ? extra : bad[i].vocab, bad[i].merges, bad[i].added, bad[i].pre, bad[i].norm);
        expect_err(tj, NULL, NULL, bad[i].want, bad[i].n1, bad[i].n2);
        free(tj);
        free(extra);
    }
    /* tokenizer_config / generation_config */
    tj = mk_json("", "", k_added, k_bl, "null");
    expect_err(tj, "{\"eos_token\":\"</s>\"}", NULL, SPK_ERR_FORMAT, "tokenizer_config.json", "'</s>'");
    expect_err(tj, "{\"eos_token\":{\"id\":3}}", NULL, SPK_ERR_FORMAT, "eos_token", NULL);
    expect_err(tj, "{\"add_bos_token\":\"yes\"}", NULL, SPK_ERR_FORMAT, "add_bos_token", NULL);
    expect_err(tj, "{\"chat_template\":42}", NULL, SPK_ERR_FORMAT, "chat_template", NULL);
    expect_err(tj, "{\"add_bos_token\":true}", NULL, SPK_ERR_FORMAT, "bos", NULL); /* no bos token */
    expect_err(tj, NULL, "{\"eos_token_id\":[5,70000]}", SPK_ERR_FORMAT, "generation_config.json", "70000");
    expect_err(tj, NULL, "{\"eos_token_id\":-1}", SPK_ERR_FORMAT, "eos_token_id", NULL);
    expect_err(tj, NULL, "{\"bos_token_id\":\"x\"}", SPK_ERR_FORMAT, "bos_token_id", NULL);
    expect_err(tj, NULL, "nope", SPK_ERR_FORMAT, "generation_config.json", "not valid JSON");
    free(tj);
    /* a directory without tokenizer.json */
    spk_hf_tok hf;
    ck_assert_int_eq(spk_hf_tok_read("/nonexistent-dir-spk", &hf), SPK_ERR_NOT_FOUND);
    ck_assert_msg(strstr(spk_last_error(), "/nonexistent-dir-spk/tokenizer.json"), "%s", spk_last_error());
}
END_TEST

/* A directory on disk: chat_template.jinja beside tokenizer_config.json, list-form templates. */
START_TEST(directory_with_jinja_template)
{
    char dir[] = "/tmp/spk_hf_tok_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    char *tj = mk_json("", "\"a b\"", k_added, k_bl, "null");
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(tj, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", f);
    fclose(f);
    spk_hf_tok hf;
    ck_assert_msg(spk_hf_tok_read(dir, &hf) == SPK_OK, "%s", spk_last_error());
    ck_assert_ptr_nonnull(hf.chat_template);
    ck_assert(strstr(hf.chat_template, "<|im_start|>") != NULL);
    spk_hf_tok_free(&hf);
    /* the list form: the "default" entry wins over the jinja file */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"T\"},{\"name\":\"default\",\"template\":\"D\"}]}", f);
    fclose(f);
    ck_assert_msg(spk_hf_tok_read(dir, &hf) == SPK_OK, "%s", spk_last_error());
    ck_assert_str_eq(hf.chat_template, "D");
    spk_hf_tok_free(&hf);
    unlink(path);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
    free(tj);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hf_tok");
    TCase *tc = tcase_create("hf_tok");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, family_matches_tokenizers, 0, 8);
    tcase_add_test(tc, tiny_tokenizer_end_to_end);
    tcase_add_test(tc, post_processor_tokens_win);
    tcase_add_test(tc, malformed_files_give_clear_errors);
    tcase_add_test(tc, directory_with_jinja_template);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}

/*
 * Chat templates of the model families, detected from the real templates (the ones llama.cpp
 * ships, copied into tests/data/ref_chat_families.json by tests/ref/gen-chat-families.py) and
 * rendered byte for byte as:
 *   Qwen3        its Jinja template (Jinja2 as HF transformers renders it; llama.cpp --jinja runs
 *                the same template), thinking on (default) and enable_thinking=false
 *   ChatML       Qwen2.5's Jinja template (its default system message included)
 *   Llama 3      llama.cpp's built-in renderer (llama_chat_apply_template; the Jinja template
 *                adds today's date, which no fixed reference can hold)
 *   Mistral v7   llama.cpp's "mistral-v7" renderer, which its detection picks for these
 *                templates, and "mistral-v7-tekken" for Tekken vocabularies (the spacing the
 *                Mistral Small 3.x Jinja template renders); no default system prompt (it embeds
 *                today's date)
 *   Harmony      llama.cpp's built-in renderer for gpt-oss (the Jinja template embeds today's date)
 * Every other family: UNSUPPORTED naming it.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "common/error.h"
#include "model/chat.h"
#include "tools/synth.h"
#include "testutil.h"

static cJSON *g_ref;
static char *g_txt;

static void setup(void)
{
    size_t len;
    g_txt = spk_test_read_file(SPK_TEST_DATA_DIR "/ref_chat_families.json", &len);
    ck_assert_ptr_nonnull(g_txt);
    g_ref = cJSON_Parse(g_txt);
    ck_assert_ptr_nonnull(g_ref);
}

static void teardown(void)
{
    cJSON_Delete(g_ref);
    free(g_txt);
}

static int check_one(const char *file, const char *tmpl, unsigned flags, cJSON *c, const char *key)
{
    cJSON *want = cJSON_GetObjectItem(c, key);
    if (!cJSON_IsString(want))
        return 1; /* not rendered by that reference */
    spk_chat_message msgs[8];
    size_t n = 0;
    cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(c, "messages"))
    {
        msgs[n].role = cJSON_GetArrayItem(m, 0)->valuestring;
        msgs[n].content = cJSON_GetArrayItem(m, 1)->valuestring;
        n++;
    }
    const bool add = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_assistant"));
    char buf[4096];
    size_t got = 0;
    spk_status st = spk_chat_render_template_ex(tmpl, strlen(tmpl), flags, msgs, n, add, buf, sizeof buf, &got);
    ck_assert_msg(st == SPK_OK, "%s: %s", file, spk_last_error());
    if (got != strlen(want->valuestring) || memcmp(buf, want->valuestring, got) != 0) {
        printf("MISMATCH %s (%s, %zu messages, add_assistant %d):\n  got  [%.*s]\n  want [%s]\n", file, key, n, add,
               (int)got, buf, want->valuestring);
        return 0;
    }
    return 1;
}

START_TEST(families_render_like_their_reference)
{
    int n_ok = 0, n = 0, n_refused = 0;
    cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(g_ref, "templates"))
    {
        const char *fam = cJSON_GetObjectItem(t, "family")->valuestring;
        const char *file = cJSON_GetObjectItem(t, "file")->valuestring;
        const char *tmpl = cJSON_GetObjectItem(t, "template")->valuestring;
        const size_t tl = strlen(tmpl);
        const spk_chat_kind k = spk_chat_detect(tmpl, tl);
        if (strcmp(fam, "qwen3") == 0)
            ck_assert_int_eq(k, SPK_CHAT_QWEN3);
        else if (strcmp(fam, "chatml") == 0)
            ck_assert_int_eq(k, SPK_CHAT_CHATML);
        else if (strcmp(fam, "llama3") == 0)
            ck_assert_int_eq(k, SPK_CHAT_LLAMA3);
        else if (strcmp(fam, "mistral-v7") == 0)
            ck_assert_int_eq(k, SPK_CHAT_MISTRAL_V7);
        else if (strcmp(fam, "harmony") == 0)
            ck_assert_int_eq(k, SPK_CHAT_HARMONY);
        else {
            /* a family we do not render: refused, by name */
            ck_assert_msg(k == SPK_CHAT_UNKNOWN, "%s detected as %d", file, k);
            spk_chat_message msg = {"user", "hi"};
            char buf[64];
            size_t got;
            ck_assert_int_eq(spk_chat_render_template(tmpl, tl, &msg, 1, true, buf, sizeof buf, &got),
                             SPK_ERR_UNSUPPORTED);
            const char *want = fam;
            ck_assert_msg(strstr(spk_last_error(), want), "%s: message '%s' does not name '%s'", file,
                          spk_last_error(), want);
            printf("refused as expected: %s: %s\n", file, spk_last_error());
            n_refused++;
            continue;
        }
        cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(t, "cases"))
        {
            if (k == SPK_CHAT_QWEN3) {
                n_ok += check_one(file, tmpl, 0, c, "jinja");
                n_ok += check_one(file, tmpl, SPK_CHAT_NO_THINKING, c, "jinja_no_think");
                n += 2;
            } else if (k == SPK_CHAT_CHATML) {
                n_ok += check_one(file, tmpl, 0, c, "jinja");
                n++;
            } else if (k == SPK_CHAT_LLAMA3 || k == SPK_CHAT_HARMONY) {
                n_ok += check_one(file, tmpl, 0, c, "builtin");
                n++;
            } else {
                n_ok += check_one(file, tmpl, 0, c, "builtin");
                n_ok += check_one(file, tmpl, SPK_CHAT_TEKKEN, c, "builtin_tekken");
                n += 2;
            }
        }
    }
    printf("chat families: %d/%d renderings identical to the reference, %d families refused by name\n", n_ok, n,
           n_refused);
    ck_assert_int_eq(n_ok, n);
    ck_assert_int_ge(n, 40);
    ck_assert_int_ge(n_refused, 3);
}
END_TEST

/* A template of no known family: UNSUPPORTED quoting its start. */
START_TEST(unknown_template_is_refused)
{
    static const char t[] = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}";
    spk_chat_message msg = {"user", "hi"};
    char buf[64];
    size_t got;
    ck_assert_int_eq(spk_chat_render_template(t, sizeof t - 1, &msg, 1, true, buf, sizeof buf, &got),
                     SPK_ERR_UNSUPPORTED);
    ck_assert(strstr(spk_last_error(), "not recognised") && strstr(spk_last_error(), "qwen3"));
}
END_TEST

/* The public switch: a model file carrying Qwen3's real template (a synthetic qwen3-tiny with that
 * tokenizer.chat_template), rendered through spk_chat_apply_opts with enable_thinking 1 and 0 and
 * compared with the Jinja reference's "jinja" and "jinja_no_think" (transformers'
 * apply_chat_template(enable_thinking=False)); spk_chat_apply and NULL options are the default
 * (thinking on); the options' struct_size follows docs/ABI.md. */
START_TEST(public_api_thinking_switch)
{
    cJSON *t, *q3 = NULL;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(g_ref, "templates"))
        if (!q3 && strcmp(cJSON_GetObjectItem(t, "family")->valuestring, "qwen3") == 0)
            q3 = t;
    ck_assert_ptr_nonnull(q3);
    char dir[] = "/tmp/spk-test-chatfam.XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/qwen3.gguf", dir);
    spk_synth_params sp;
    ck_assert_int_eq(spk_synth_preset("qwen3-tiny", &sp), SPK_OK);
    sp.chat_template = cJSON_GetObjectItem(q3, "template")->valuestring;
    ck_assert_msg(spk_synth_write(path, &sp) == SPK_OK, "%s", spk_last_error());
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.n_threads = 1;
    spk_cluster *cl = NULL;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = path;
    mc.n_ctx = 64;
    mc.max_seqs = 1;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(cl, &mc, &m) == SPK_OK, "%s", spk_last_error());
    int n_cases = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(q3, "cases"))
    {
        spk_chat_message msgs[8];
        size_t n = 0;
        cJSON *mj;
        cJSON_ArrayForEach(mj, cJSON_GetObjectItem(c, "messages"))
        {
            msgs[n].role = cJSON_GetArrayItem(mj, 0)->valuestring;
            msgs[n].content = cJSON_GetArrayItem(mj, 1)->valuestring;
            n++;
        }
        const int add = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_assistant"));
        for (int think = 0; think <= 1; think++) {
            const char *want = cJSON_GetObjectItem(c, think ? "jinja" : "jinja_no_think")->valuestring;
            spk_chat_options o;
            ck_assert_int_eq(spk_chat_options_init(&o), SPK_OK);
            ck_assert_int_eq(o.add_assistant, 1);
            ck_assert_int_eq(o.enable_thinking, 1);
            o.add_assistant = add;
            o.enable_thinking = think;
            char buf[4096];
            size_t got = 0;
            ck_assert_msg(spk_chat_apply_opts(m, msgs, n, &o, buf, sizeof buf, &got) == SPK_OK, "%s", spk_last_error());
            ck_assert_msg(got == strlen(want) && memcmp(buf, want, got) == 0,
                          "enable_thinking %d, %zu messages, add_assistant %d:\n got  [%.*s]\n want [%s]", think, n,
                          add, (int)got, buf, want);
            if (think) { /* the defaults: spk_chat_apply, and NULL options when add_assistant is 1 */
                ck_assert_int_eq(spk_chat_apply(m, msgs, n, add, buf, sizeof buf, &got), SPK_OK);
                ck_assert(got == strlen(want) && memcmp(buf, want, got) == 0);
                if (add) {
                    ck_assert_int_eq(spk_chat_apply_opts(m, msgs, n, NULL, buf, sizeof buf, &got), SPK_OK);
                    ck_assert(got == strlen(want) && memcmp(buf, want, got) == 0);
                }
            } else if (add) {
                static const char tail[] = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
                ck_assert_msg(got >= sizeof tail - 1 && strcmp(buf + got - (sizeof tail - 1), tail) == 0,
                              "no empty think block at the end: [%s]", buf);
            }
            n_cases++;
        }
    }
    printf("qwen3 through spk_chat_apply_opts: %d renderings identical to the Jinja reference\n", n_cases);
    ck_assert_int_ge(n_cases, 4);
    /* struct_size: only struct_size known (an older caller) = the defaults; a larger one is accepted;
     * below sizeof(size_t) or absurd is INVALID_ARG */
    spk_chat_message hi = {"user", "hi"};
    char buf[256];
    size_t got;
    struct {
        spk_chat_options o;
        char newer[16];
    } big;
    memset(&big, 0x5a, sizeof big);
    ck_assert_int_eq(spk_chat_options_init(&big.o), SPK_OK);
    big.o.struct_size = sizeof big;
    big.o.enable_thinking = 0;
    ck_assert_int_eq(spk_chat_apply_opts(m, &hi, 1, &big.o, buf, sizeof buf, &got), SPK_OK);
    ck_assert_str_eq(buf, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    spk_chat_options old;
    memset(&old, 0, sizeof old); /* zeros past struct_size must not be read */
    old.struct_size = sizeof(size_t);
    ck_assert_int_eq(spk_chat_apply_opts(m, &hi, 1, &old, buf, sizeof buf, &got), SPK_OK);
    ck_assert_str_eq(buf, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    old.struct_size = 4;
    ck_assert_int_eq(spk_chat_apply_opts(m, &hi, 1, &old, buf, sizeof buf, &got), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "struct_size 4"));
    old.struct_size = 1 << 20;
    ck_assert_int_eq(spk_chat_apply_opts(m, &hi, 1, &old, buf, sizeof buf, &got), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_chat_options_init(NULL), SPK_ERR_INVALID_ARG);
    spk_model_free(m);
    spk_cluster_close(cl);
    unlink(path);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_families");
    TCase *tc = tcase_create("chat");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_add_test(tc, families_render_like_their_reference);
    tcase_add_test(tc, unknown_template_is_refused);
    tcase_add_test(tc, public_api_thinking_switch);
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}

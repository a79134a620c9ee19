/* Issue 11's request features on the default model: rich outputs (spk_poll_outputs), private
 * requests (spk_poll_request), text prompts and output text, stop strings, per-request error
 * messages, log-probs, min-p, penalties and seeds. The sampler parts (min-p, penalty lists) are
 * also checked without a model against straightforward references. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "sparkinfer/sparkinfer.h"
#include "testutil.h"

static spk_cluster *cl;
static spk_model *model;

static void model_setup(void) { model = spk_test_open_model(&cl, 4, 256, 16); }

static void model_teardown(void)
{
    spk_model_free(model);
    spk_cluster_close(cl);
}

/* A request's outputs until its final one (shared queue or its own), checked as they come. */
typedef struct run {
    spk_output out[300];
    int n;                    /* outputs */
    int32_t tok[300];
    int n_tok;
    char text[8192];          /* the outputs' text concatenated */
    size_t text_len;
} run;

static void collect(uint64_t id, int priv, run *r)
{
    memset(r, 0, sizeof *r);
    uint64_t last_ns = 0;
    for (;;) {
        spk_output o[8];
        spk_output_init(&o[0]);
        size_t n;
        spk_status st = priv ? spk_poll_request(model, id, o, 8, &n, 30000) : spk_poll_outputs(model, o, 8, &n, 30000);
        ck_assert_msg(st == SPK_OK, "%s", spk_last_error());
        ck_assert_uint_gt(n, 0);
        for (size_t i = 0; i < n; i++) {
            ck_assert(o[i].request_id == id);
            ck_assert_uint_eq(o[i].struct_size, sizeof(spk_output));
            ck_assert_uint_ge(o[i].time_ns, last_ns);
            last_ns = o[i].time_ns;
            ck_assert_uint_lt(o[i].text_len, SPK_OUTPUT_TEXT_CAP);
            ck_assert_uint_eq(strlen(o[i].text), o[i].text_len);
            ck_assert_int_lt(r->n, 300);
            r->out[r->n++] = o[i];
            memcpy(r->text + r->text_len, o[i].text, o[i].text_len);
            r->text_len += o[i].text_len;
            r->text[r->text_len] = '\0';
            if (o[i].token >= 0 && o[i].position >= o[i].n_prompt) { /* generated, not an echoed prompt token */
                r->tok[r->n_tok++] = o[i].token;
                ck_assert_int_eq(o[i].n_generated, r->n_tok);
            }
            if (o[i].finish != SPK_FINISH_NONE) {
                ck_assert_uint_eq(i, n - 1); /* nothing of this request after its final output */
                return;
            }
        }
    }
}

static void greedy(spk_request *r, const char *text, int max_tokens)
{
    spk_request_init(r);
    r->text = text;
    r->text_len = strlen(text);
    r->max_tokens = max_tokens;
    r->temperature = 0;
    r->ignore_eos = 1;
}

START_TEST(output_init_and_defaults)
{
    spk_output o;
    memset(&o, 0x5a, sizeof o);
    ck_assert_int_eq(spk_output_init(&o), SPK_OK);
    ck_assert_uint_eq(o.struct_size, sizeof o);
    ck_assert_int_eq(o.token, -1);
    ck_assert(isnan(o.logprob));
    ck_assert_int_eq(o.n_top, 0);
    ck_assert_uint_eq(o.text_len, 0);
    ck_assert_str_eq(o.text, "");
    ck_assert_str_eq(o.message, "");
    ck_assert_int_eq(spk_output_init(NULL), SPK_ERR_INVALID_ARG);
    spk_request r;
    spk_request_init(&r);
    ck_assert(r.seed == SPK_SEED_RANDOM);
    ck_assert(r.repeat_penalty == 1.0f && r.repeat_last_n == 64 && r.min_p == 0.0f);
    ck_assert(r.frequency_penalty == 0.0f && r.presence_penalty == 0.0f);
    ck_assert(r.text == NULL && r.n_stop_strings == 0 && r.logprobs == 0 && r.private_events == 0);
    size_t n;
    ck_assert_int_eq(spk_poll_outputs(NULL, &o, 1, &n, 0), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_poll_request(NULL, 1, &o, 1, &n, 0), SPK_ERR_INVALID_ARG);
}
END_TEST

START_TEST(text_prompt_and_output_text)
{
    const char *prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    int32_t ids[64];
    size_t np;
    ck_assert_int_eq(spk_tokenize(model, prompt, strlen(prompt), 1, 1, ids, 64, &np), SPK_OK);
    spk_request r;
    greedy(&r, prompt, 16);
    r.ignore_eos = 0;
    uint64_t id, id2;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    static run a, b;
    collect(id, 0, &a);
    ck_assert_int_eq(a.out[0].n_prompt, (int)np);
    ck_assert(isnan(a.out[0].logprob)); /* not asked for */
    ck_assert_int_eq(a.out[0].n_top, 0);
    /* the text is the tokens' text, special tokens skipped */
    char ref[4096];
    size_t rl;
    ck_assert_int_eq(spk_detokenize(model, a.tok, (size_t)a.n_tok, 1, ref, sizeof ref, &rl), SPK_OK);
    ref[rl] = 0;
    ck_assert_str_eq(a.text, ref);
    ck_assert_msg(strstr(a.text, "Paris") != NULL, "answer was '%s'", a.text);
    ck_assert_int_eq(a.out[a.n - 1].finish, SPK_FINISH_STOP); /* <|im_end|> */
    /* the same prompt as ids gives the same tokens */
    r.text = NULL;
    r.text_len = 0;
    r.prompt = ids;
    r.n_prompt = np;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id2), SPK_OK);
    collect(id2, 0, &b);
    ck_assert_int_eq(a.n_tok, b.n_tok);
    ck_assert(memcmp(a.tok, b.tok, sizeof(int32_t) * (size_t)a.n_tok) == 0);
    /* an empty text prompt has no tokens (this model adds no BOS): refused */
    r.prompt = NULL;
    r.n_prompt = 0;
    r.text = "";
    ck_assert_int_eq(spk_submit(model, &r, 1, &id2), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(spk_last_error(), "empty prompt"));
}
END_TEST

START_TEST(too_long_has_a_message)
{
    static char text[4000];
    for (int i = 0; i < 300; i++)
        memcpy(text + 2 * i, "a ", 2);
    int32_t ids[1024];
    size_t np;
    ck_assert_int_eq(spk_tokenize(model, text, 600, 1, 1, ids, 1024, &np), SPK_OK);
    ck_assert_uint_gt(np, 256);
    spk_request r;
    greedy(&r, text, 4);
    r.text_len = 600;
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    static run a;
    collect(id, 0, &a);
    ck_assert_int_eq(a.n, 1);
    ck_assert_int_eq(a.out[0].finish, SPK_FINISH_ERROR);
    ck_assert_int_eq(a.out[0].status, SPK_ERR_TOO_LONG);
    char want[128];
    snprintf(want, sizeof want, "prompt is %zu tokens; the context holds 256", np);
    ck_assert_msg(strstr(a.out[0].message, want) != NULL, "message '%s'", a.out[0].message);
    ck_assert_int_eq(a.out[0].n_prompt, (int)np);
    /* a request that ends well has no message */
    greedy(&r, "Hello", 2);
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &a);
    ck_assert_str_eq(a.out[a.n - 1].message, "");
    ck_assert_int_eq(a.out[a.n - 1].finish, SPK_FINISH_LENGTH);
}
END_TEST

START_TEST(stop_string_across_tokens)
{
    spk_request r;
    greedy(&r, "The capital of France is", 12);
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    static run a, b;
    collect(id, 0, &a);
    ck_assert_int_eq(a.n_tok, 12);
    /* token i's text ends at end[i]; pick a boundary where the stop string (2 bytes before and 2
     * after it) first occurs in the text */
    size_t end[300], pos = 0;
    for (int i = 0; i < a.n; i++)
        end[i] = pos += a.out[i].text_len;
    int bi = -1;
    char stop[8];
    for (int i = 1; i + 1 < a.n_tok && bi < 0; i++) {
        if (a.out[i].text_len < 2 || a.out[i + 1].text_len < 2)
            continue;
        memcpy(stop, a.text + end[i] - 2, 4);
        stop[4] = 0;
        if ((size_t)(strstr(a.text, stop) - a.text) == end[i] - 2)
            bi = i;
    }
    ck_assert_msg(bi >= 0, "no usable token boundary in '%s'", a.text);
    const char *stops[2] = {"never appears here", stop};
    r.stop_strings = stops;
    r.n_stop_strings = 2;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &b);
    ck_assert_int_eq(b.out[b.n - 1].finish, SPK_FINISH_STOP);
    ck_assert_int_eq(b.n_tok, bi + 2); /* ended at the token that completed the match */
    ck_assert_uint_eq(b.text_len, end[bi] - 2);
    ck_assert(memcmp(b.text, a.text, b.text_len) == 0);
    ck_assert_ptr_null(strstr(b.text, stop));
    /* the first half of the stop string was held back: not emitted with token bi */
    size_t upto = 0;
    for (int i = 0; i <= bi; i++)
        upto += b.out[i].text_len;
    ck_assert_uint_le(upto, end[bi] - 2);
    /* spk_poll sees the same end */
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    int nt = 0;
    for (int done = 0; !done;) {
        spk_event ev[16];
        size_t n;
        ck_assert_int_eq(spk_poll(model, ev, 16, &n, 30000), SPK_OK);
        for (size_t i = 0; i < n; i++) {
            ck_assert(ev[i].request_id == id);
            nt += ev[i].token >= 0;
            if (ev[i].finish != SPK_FINISH_NONE) {
                ck_assert_int_eq(ev[i].finish, SPK_FINISH_STOP);
                done = 1;
            }
        }
    }
    ck_assert_int_eq(nt, bi + 2);
    /* bad stop strings */
    const char *bad1[1] = {""};
    const char *bad2[1] = {"\xc3("};
    static char longs[300];
    memset(longs, 'x', 299);
    const char *bad3[1] = {longs};
    const char *bad4[1] = {NULL};
    const char *const *bads[4] = {bad1, bad2, bad3, bad4};
    for (int i = 0; i < 4; i++) {
        r.stop_strings = bads[i];
        r.n_stop_strings = 1;
        ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
        ck_assert_ptr_nonnull(strstr(spk_last_error(), "stop string 0"));
    }
    r.stop_strings = stops;
    r.n_stop_strings = SPK_MAX_STOP_STRINGS + 1;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
}
END_TEST

START_TEST(older_and_newer_layouts)
{
    /* a request of a caller built before the new fields: the bytes after ignore_eos are garbage
     * in memory and must not be read */
    union {
        spk_request r;
        unsigned char raw[sizeof(spk_request) + 64];
    } u;
    memset(&u, 0xA5, sizeof u);
    int32_t prompt[4] = {504, 3458, 314, 260};
    spk_request_init(&u.r);
    memset((char *)&u.r + offsetof(spk_request, text), 0xA5, sizeof u - offsetof(spk_request, text));
    u.r.struct_size = offsetof(spk_request, text);
    u.r.prompt = prompt;
    u.r.n_prompt = 4;
    u.r.max_tokens = 3;
    u.r.temperature = 0;
    uint64_t id;
    ck_assert_msg(spk_submit(model, &u.r, 1, &id) == SPK_OK, "%s", spk_last_error());
    /* outputs of an older, shorter layout: that many bytes per output, at that stride */
    const size_t old = offsetof(spk_output, text_len);
    static unsigned char buf[4 * sizeof(spk_output)];
    spk_output *o = (spk_output *)buf, init;
    spk_output_init(&init);
    init.struct_size = old;
    int got = 0, fin = 0;
    while (!fin) {
        memset(buf, 0xEE, sizeof buf);
        memcpy(buf, &init, old);
        size_t n;
        ck_assert_int_eq(spk_poll_outputs(model, o, 3, &n, 30000), SPK_OK);
        for (size_t i = 0; i < n; i++) {
            spk_output x;
            memcpy(&x, buf + i * old, old);
            ck_assert(x.request_id == id);
            ck_assert_uint_eq(x.struct_size, old);
            got += x.token >= 0;
            fin = x.finish != SPK_FINISH_NONE;
        }
        for (size_t j = n * old; j < sizeof buf; j++)
            ck_assert_uint_eq(buf[j], 0xEE);
    }
    ck_assert_int_eq(got, 3);
    memcpy(buf, &init, old);
    o->struct_size = 7;
    size_t n;
    ck_assert_int_eq(spk_poll_outputs(model, o, 1, &n, 0), SPK_ERR_INVALID_ARG);
}
END_TEST

/* ---- private requests ---- */

typedef struct worker {
    uint64_t id;
    run r;
} worker;

static void *poll_own(void *arg)
{
    worker *w = arg;
    collect(w->id, 1, &w->r);
    return NULL;
}

START_TEST(private_requests_poll_their_own)
{
    spk_request r[3];
    greedy(&r[0], "One two three", 10);
    greedy(&r[1], "The capital of France is", 12);
    greedy(&r[2], "Hello", 5);
    r[0].private_events = r[1].private_events = 1;
    uint64_t ids[3];
    ck_assert_int_eq(spk_submit(model, r, 3, ids), SPK_OK);
    /* the shared queue only ever sees the third */
    static run shared;
    collect(ids[2], 0, &shared);
    ck_assert_int_eq(shared.n_tok, 5);
    static worker w[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        w[i].id = ids[i];
        ck_assert_int_eq(pthread_create(&th[i], NULL, poll_own, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(w[0].r.n_tok, 10);
    ck_assert_int_eq(w[1].r.n_tok, 12);
    ck_assert_int_eq(w[1].r.out[w[1].r.n - 1].finish, SPK_FINISH_LENGTH);
    /* the same request run on the shared queue gives the same tokens */
    r[1].private_events = 0;
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r[1], 1, &id), SPK_OK);
    static run again;
    collect(id, 0, &again);
    ck_assert(memcmp(again.tok, w[1].r.tok, sizeof(int32_t) * 12) == 0);
    ck_assert_str_eq(again.text, w[1].r.text);
    /* ended ids are forgotten; shared ids and unknown ones are not private */
    spk_output o;
    spk_output_init(&o);
    size_t n;
    ck_assert_int_eq(spk_poll_request(model, ids[0], &o, 1, &n, 0), SPK_ERR_NOT_FOUND);
    ck_assert_int_eq(spk_poll_request(model, id, &o, 1, &n, 0), SPK_ERR_NOT_FOUND);
    ck_assert_int_eq(spk_poll_request(model, 987654, &o, 1, &n, 0), SPK_ERR_NOT_FOUND);
    spk_event ev[4];
    ck_assert_int_eq(spk_poll(model, ev, 4, &n, 100), SPK_OK);
    ck_assert_uint_eq(n, 0);
    /* a private request nobody polls for a while is held at its bound, others run on, and it
     * completes once polled; cancel reaches it too */
    greedy(&r[0], "Count: 1, 2, 3,", 100);
    r[0].private_events = 1;
    ck_assert_int_eq(spk_submit(model, &r[0], 1, &ids[0]), SPK_OK);
    greedy(&r[2], "Hello", 80);
    ck_assert_int_eq(spk_submit(model, &r[2], 1, &ids[2]), SPK_OK);
    collect(ids[2], 0, &shared);
    ck_assert_int_eq(shared.n_tok, 80);
    w[0].id = ids[0];
    poll_own(&w[0]);
    ck_assert_int_eq(w[0].r.n_tok, 100);
    ck_assert_int_eq(spk_submit(model, &r[0], 1, &ids[0]), SPK_OK);
    ck_assert_int_eq(spk_cancel(model, ids[0]), SPK_OK);
    collect(ids[0], 1, &w[0].r);
    ck_assert_int_eq(w[0].r.out[w[0].r.n - 1].finish, SPK_FINISH_CANCELLED);
}
END_TEST

/* ---- log-probs ---- */

START_TEST(logprobs_of_greedy_tokens)
{
    spk_request r;
    greedy(&r, "The capital of France is", 8);
    r.logprobs = 1;
    r.top_logprobs = 5;
    uint64_t id;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    static run a;
    collect(id, 0, &a);
    ck_assert_int_eq(a.n_tok, 8);
    for (int i = 0; i < a.n; i++) {
        const spk_output *o = &a.out[i];
        if (o->token < 0)
            continue;
        ck_assert_int_eq(o->n_top, 5);
        /* greedy: the token is the most likely, its log-prob the largest of the log-softmax */
        ck_assert_int_eq(o->top[0].token, o->token);
        ck_assert(o->logprob == o->top[0].logprob);
        double mass = 0;
        for (int j = 0; j < o->n_top; j++) {
            ck_assert(o->top[j].logprob <= 0.0f);
            ck_assert(j == 0 || o->top[j].logprob <= o->top[j - 1].logprob);
            for (int k = 0; k < j; k++)
                ck_assert_int_ne(o->top[j].token, o->top[k].token);
            mass += exp(o->top[j].logprob);
        }
        ck_assert_msg(mass <= 1.0 + 1e-4 && mass > 0.05, "top-5 mass %g", mass);
    }
    /* sampled tokens: the log-prob is the same distribution's, whatever the temperature */
    r.temperature = 1.5f;
    r.top_k = 0;
    r.top_p = 1.0f;
    r.seed = 7;
    r.top_logprobs = 20;
    r.max_tokens = 12;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    static run s;
    collect(id, 0, &s);
    for (int i = 0; i < s.n; i++) {
        const spk_output *o = &s.out[i];
        if (o->token < 0)
            continue;
        ck_assert_int_eq(o->n_top, 20);
        ck_assert(o->logprob <= o->top[0].logprob && o->logprob <= 0.0f && isfinite(o->logprob));
        for (int j = 0; j < 20; j++)
            if (o->top[j].token == o->token)
                ck_assert_msg(fabsf(o->top[j].logprob - o->logprob) < 1e-5f, "%g vs %g", o->top[j].logprob,
                              o->logprob);
    }
    /* the prompt's first step: the greedy run's first log-prob equals the sampled run's top */
    ck_assert(fabsf(s.out[0].top[0].logprob - a.out[0].logprob) < 1e-5f);
    r.top_logprobs = SPK_MAX_TOP_LOGPROBS + 1;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
    r.top_logprobs = 0;
    r.prompt_logprobs = 2;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
}
END_TEST

/* prompt_logprobs ("echo"): one output per prompt token first, each with the log-prob the model
 * gives that token after the ones before it; checked against requests whose prompt ends just
 * before it. The prompt is longer than a step's 32 prompt rows. */
START_TEST(prompt_logprobs_echo)
{
    const char *text = "The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the "
                       "capital of Italy is Rome. One, two, three, four, five, six, seven, eight, nine, ten.";
    int32_t ids[128];
    size_t np;
    ck_assert_int_eq(spk_tokenize(model, text, strlen(text), 1, 1, ids, 128, &np), SPK_OK);
    ck_assert_uint_gt(np, 40);
    spk_request r;
    greedy(&r, text, 3);
    r.prompt_logprobs = 1;
    r.top_logprobs = 20;
    uint64_t id;
    ck_assert_msg(spk_submit(model, &r, 1, &id) == SPK_OK, "%s", spk_last_error());
    static run a, b;
    collect(id, 0, &a);
    ck_assert_int_eq(a.n, (int)np + 3);
    for (int q = 0; q < (int)np; q++) {
        const spk_output *o = &a.out[q];
        ck_assert_int_eq(o->position, q);
        ck_assert_int_eq(o->token, ids[q]);
        ck_assert_int_eq(o->n_generated, 0);
        ck_assert_uint_eq(o->text_len, 0);
        if (q == 0) {
            ck_assert(isnan(o->logprob));
            ck_assert_int_eq(o->n_top, 0);
        } else {
            ck_assert(isfinite(o->logprob) && o->logprob <= 0.0f && o->logprob <= o->top[0].logprob + 1e-6f);
            ck_assert_int_eq(o->n_top, 20);
        }
    }
    ck_assert_int_eq(a.out[np].position, (int)np); /* then the generated tokens */
    ck_assert(isfinite(a.out[np].logprob));        /* logprobs is implied by top_logprobs */
    ck_assert_int_eq(a.out[np].n_generated, 1);
    /* position q's distribution is what a prompt of the first q tokens predicts next */
    const int qs[3] = {1, 17, (int)np - 1};
    for (int k = 0; k < 3; k++) {
        int q = qs[k];
        spk_request p;
        greedy(&p, "", 1);
        p.text = NULL;
        p.prompt = ids;
        p.n_prompt = (size_t)q;
        p.top_logprobs = 20;
        ck_assert_int_eq(spk_submit(model, &p, 1, &id), SPK_OK);
        collect(id, 0, &b);
        const spk_output *e = &a.out[q], *f = &b.out[0];
        for (int j = 0; j < 20; j++) {
            ck_assert_int_eq(e->top[j].token, f->top[j].token);
            ck_assert_msg(fabsf(e->top[j].logprob - f->top[j].logprob) < 1e-3f, "q %d top %d: %g vs %g", q, j,
                          e->top[j].logprob, f->top[j].logprob);
            if (f->top[j].token == ids[q])
                ck_assert(fabsf(e->logprob - f->top[j].logprob) < 1e-3f);
        }
    }
    /* the generated tokens are the ones without echo */
    r.prompt_logprobs = 0;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &b);
    ck_assert_int_eq(a.n_tok, 3);
    ck_assert_int_eq(b.n_tok, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(b.tok[i], a.tok[i]);
}
END_TEST

/* ---- samplers ---- */

START_TEST(seed_random_by_default_fixed_when_set)
{
    spk_request r[2];
    for (int i = 0; i < 2; i++) {
        spk_request_init(&r[i]);
        r[i].text = "Once upon a time";
        r[i].text_len = 16;
        r[i].max_tokens = 16;
        r[i].temperature = 1.0f;
        r[i].top_k = 0;
        r[i].top_p = 1.0f;
        r[i].ignore_eos = 1;
    }
    uint64_t ids[2];
    static run a, b;
    r[0].private_events = r[1].private_events = 1; /* run at once, each read on its own */
    ck_assert_int_eq(spk_submit(model, r, 2, ids), SPK_OK);
    collect(ids[0], 1, &a);
    collect(ids[1], 1, &b);
    ck_assert_int_eq(a.n_tok, 16);
    ck_assert_int_eq(b.n_tok, 16);
    ck_assert_msg(memcmp(a.tok, b.tok, sizeof(int32_t) * 16) != 0, "two unseeded samples were equal: '%s'", a.text);
    r[0].seed = r[1].seed = 42;
    ck_assert_int_eq(spk_submit(model, r, 2, ids), SPK_OK);
    collect(ids[0], 1, &a);
    collect(ids[1], 1, &b);
    ck_assert(memcmp(a.tok, b.tok, sizeof(int32_t) * 16) == 0);
}
END_TEST

static int repeats(const run *r)
{
    int rep = 0;
    for (int i = 0; i < r->n_tok; i++)
        for (int j = 0; j < i; j++)
            if (r->tok[j] == r->tok[i]) {
                rep++;
                break;
            }
    return rep;
}

START_TEST(frequency_penalty_reduces_repetition)
{
    spk_request r;
    greedy(&r, "I like cats. I like dogs. I like cats. I like", 32);
    uint64_t id;
    static run base, pen, pres, rp;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &base);
    r.frequency_penalty = 2.0f;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &pen);
    ck_assert_msg(repeats(&pen) < repeats(&base), "repeated tokens: %d with the penalty, %d without",
                  repeats(&pen), repeats(&base));
    r.frequency_penalty = 0;
    r.presence_penalty = 2.0f;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &pres);
    ck_assert_int_lt(repeats(&pres), repeats(&base));
    r.presence_penalty = 0;
    r.repeat_penalty = 3.0f;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_OK);
    collect(id, 0, &rp);
    ck_assert_int_lt(repeats(&rp), repeats(&base));
    r.repeat_penalty = 0;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
    r.repeat_penalty = 1;
    r.frequency_penalty = 2.5f;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
    r.frequency_penalty = NAN;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
    r.frequency_penalty = 0;
    r.min_p = 1.5f;
    ck_assert_int_eq(spk_submit(model, &r, 1, &id), SPK_ERR_INVALID_ARG);
}
END_TEST

/* Without a model: penalty lists against a direct reference. */
START_TEST(penalties_match_reference)
{
    enum { V = 50 };
    uint64_t rs = 12345;
    int32_t *mark = calloc(V, sizeof *mark);
    for (int trial = 0; trial < 300; trial++) {
        int n_tokens = 1 + (int)(spk_test_rand(&rs) % 80), n_prompt = 1 + (int)(spk_test_rand(&rs) % (unsigned)n_tokens);
        int last_n = (int)(spk_test_rand(&rs) % 100) - 10; /* negative: 0 window here */
        if (last_n < 0)
            last_n = 0;
        float rep = spk_test_randf(&rs, 0.5f, 2.0f), freq = spk_test_randf(&rs, -2, 2), pres = spk_test_randf(&rs, -2, 2);
        if (trial % 3 == 0)
            freq = pres = 0;
        int32_t tok[80];
        for (int i = 0; i < n_tokens; i++)
            tok[i] = (int32_t)(spk_test_rand(&rs) % V);
        float logits[V], ref[V];
        spk_test_fill(logits, V, (uint64_t)trial + 1, -5, 5);
        for (int v = 0; v < V; v++) {
            int in_win = 0, count = 0;
            for (int i = n_tokens - last_n < 0 ? 0 : n_tokens - last_n; i < n_tokens && last_n > 0; i++)
                in_win |= tok[i] == v;
            for (int i = n_prompt; i < n_tokens; i++)
                count += tok[i] == v;
            float x = logits[v];
            if (in_win)
                x = x <= 0 ? x * rep : x / rep;
            ref[v] = x - ((float)count * freq + (count > 0 ? pres : 0.0f));
        }
        spk_pen pen[200];
        int np = spk_penalties_build(tok, n_tokens, n_prompt, last_n, rep, freq, pres, mark, pen);
        ck_assert_int_le(np, last_n + n_tokens - n_prompt);
        for (int v = 0; v < V; v++)
            ck_assert_int_eq(mark[v], 0);
        /* applied in two shards, as tensor-parallel ranks do */
        spk_apply_penalties(logits, 20, 0, pen, np);
        spk_apply_penalties(logits + 20, V - 20, 20, pen, np);
        for (int v = 0; v < V; v++)
            ck_assert_msg(logits[v] == ref[v], "trial %d token %d: %g vs %g", trial, v, logits[v], ref[v]);
    }
    free(mark);
}
END_TEST

START_TEST(min_p_removes_what_it_should)
{
    enum { V = 64 };
    float logits[V];
    spk_test_fill(logits, V, 99, -3, 3);
    spk_sampler_scratch s;
    ck_assert_int_eq(spk_sampler_scratch_init(&s, V), 0);
    const float temp = 0.8f, min_p = 0.3f;
    float mx = logits[spk_argmax(logits, V)];
    int seen[V] = {0};
    spk_sampling p = {temp, 0, 1.0f, min_p};
    for (int i = 0; i < 4000; i++)
        seen[spk_sample_u(logits, V, &p, (i + 0.5) / 4000.0, &s)]++;
    for (int v = 0; v < V; v++) {
        double ratio = exp((logits[v] - mx) / temp); /* p(v) / p(top) */
        if (ratio < min_p)
            ck_assert_msg(seen[v] == 0, "token %d (ratio %g) sampled %d times", v, ratio, seen[v]);
        else if (ratio > min_p * 1.01)
            ck_assert_msg(seen[v] > 0, "token %d (ratio %g) never sampled", v, ratio);
    }
    /* off: every token has a chance */
    p.min_p = 0;
    int n_seen = 0;
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 40000; i++)
        seen[spk_sample_u(logits, V, &p, (i + 0.5) / 40000.0, &s)]++;
    for (int v = 0; v < V; v++)
        n_seen += seen[v] > 0;
    ck_assert_int_gt(n_seen, 40);
    spk_sampler_scratch_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("outputs");
    TCase *tc = tcase_create("no_model");
    tcase_add_test(tc, penalties_match_reference);
    tcase_add_test(tc, min_p_removes_what_it_should);
    suite_add_tcase(s, tc);
    if (spk_test_model_path() && getenv("SPK_TEST_SMALL")) {
        /* the TSan run (make test): the cases where threads meet (engine thread, several pollers,
         * the held-back text and stop strings), not the whole suite (5 minutes under TSan) */
        TCase *tm = tcase_create("model_threads");
        tcase_add_checked_fixture(tm, model_setup, model_teardown);
        tcase_set_timeout(tm, 600);
        tcase_add_test(tm, private_requests_poll_their_own);
        tcase_add_test(tm, stop_string_across_tokens);
        suite_add_tcase(s, tm);
        printf("SPK_TEST_SMALL: the threaded cases only\n");
    } else if (spk_test_model_path()) {
        TCase *tm = tcase_create("model");
        tcase_add_checked_fixture(tm, model_setup, model_teardown);
        tcase_set_timeout(tm, 600);
        tcase_add_test(tm, output_init_and_defaults);
        tcase_add_test(tm, text_prompt_and_output_text);
        tcase_add_test(tm, older_and_newer_layouts);
        tcase_add_test(tm, too_long_has_a_message);
        tcase_add_test(tm, stop_string_across_tokens);
        tcase_add_test(tm, private_requests_poll_their_own);
        tcase_add_test(tm, logprobs_of_greedy_tokens);
        tcase_add_test(tm, prompt_logprobs_echo);
        tcase_add_test(tm, seed_random_by_default_fixed_when_set);
        tcase_add_test(tm, frequency_penalty_reduces_repetition);
        suite_add_tcase(s, tm);
    } else {
        printf("SKIP (model cases): default model not found\n");
    }
    return spk_test_run(s);
}

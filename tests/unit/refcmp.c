/* Helpers shared by the model tests: reference-JSON comparison and PP/TP/EP layouts (refcmp.h). */
#include "refcmp.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plan/plan.h"
#include "testutil.h"
#include "tp_group.h"

void spk_test_load(const char *path, spk_test_loaded *L)
{
    ck_assert_msg(spk_gguf_open(path, &L->f) == SPK_OK, "%s", spk_last_error());
    ck_assert_msg(spk_llama_load(L->f, &L->hp, &L->w) == SPK_OK, "%s", spk_last_error());
}

void spk_test_unload(spk_test_loaded *L)
{
    spk_llama_weights_free(&L->w);
    spk_gguf_close(L->f);
}

uint64_t spk_test_file_fnv(const char *path)
{
    size_t len;
    char *buf = spk_test_read_file(path, &len);
    ck_assert_ptr_nonnull(buf);
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)buf[i]) * 0x100000001B3ull;
    free(buf);
    return h;
}

void spk_test_compare_section(const spk_hparams *hp, const spk_weights *w, cJSON *seqs, spk_test_cmp_stats *st,
                              const char *debug_env)
{
    const int V = hp->n_vocab;
    memset(st, 0, sizeof *st);
    cJSON *seq;
    cJSON_ArrayForEach(seq, seqs)
    {
        cJSON *toks = cJSON_GetObjectItem(seq, "tokens"), *pos = cJSON_GetObjectItem(seq, "positions");
        cJSON *greedy = cJSON_GetObjectItem(seq, "greedy");
        const int n = cJSON_GetArraySize(toks), ng = cJSON_GetArraySize(greedy);
        ck_assert_int_eq(cJSON_GetArraySize(pos), n);
        spk_llama *m;
        ck_assert_int_eq(spk_llama_create(hp, w, NULL, 128, 1, n, 2, &m), SPK_OK);
        int32_t tk[64], ps[64], sq[64] = {0};
        uint8_t want[64];
        ck_assert_int_le(n + ng, 64);
        for (int i = 0; i < n; i++) {
            tk[i] = cJSON_GetArrayItem(toks, i)->valueint;
            ps[i] = i;
            want[i] = 1;
        }
        float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
        spk_batch b = {.n_tok = n, .token = tk, .pos = ps, .seq = sq, .want_logits = want};
        ck_assert_int_eq(spk_llama_forward(m, &b, NULL, lg), SPK_OK);
        int next = spk_test_argmax(lg + (size_t)(n - 1) * V, V);
        for (int i = 0; i < n; i++) {
            float *lp = lg + (size_t)i * V;
            spk_test_log_softmax(lp, V);
            cJSON *top = cJSON_GetObjectItem(cJSON_GetArrayItem(pos, i), "top");
            cJSON *t0 = cJSON_GetArrayItem(top, 0), *t1 = cJSON_GetArrayItem(top, 1);
            const int ref1 = cJSON_GetArrayItem(t0, 0)->valueint;
            const double margin = cJSON_GetArrayItem(t0, 1)->valuedouble - cJSON_GetArrayItem(t1, 1)->valuedouble;
            st->n_pos++;
            /* a near-tie (< 0.01 nats) may go either way under rounding; count it as agreeing */
            st->top1_agree += spk_test_argmax(lp, V) == ref1 || margin < 0.01;
            cJSON *pair;
            cJSON_ArrayForEach(pair, top)
            {
                double d = fabs(lp[cJSON_GetArrayItem(pair, 0)->valueint] - cJSON_GetArrayItem(pair, 1)->valuedouble);
                if (d > 0.02 && debug_env && getenv(debug_env)) /* which positions, when it fails */
                    printf("seq of %d, pos %d: token %d diff %.3f ref %.3f\n", n, i,
                           cJSON_GetArrayItem(pair, 0)->valueint, d, cJSON_GetArrayItem(pair, 1)->valuedouble);
                st->max_diff = d > st->max_diff ? d : st->max_diff;
                st->sum_diff += d;
                st->n_cmp++;
            }
        }
        /* greedy: one token at a time through the cache */
        for (int g = 0; g < ng; g++) {
            const int want_id = cJSON_GetArrayItem(greedy, g)->valueint;
            st->n_greedy++;
            if (next != want_id)
                break; /* the rest continues a different text */
            st->greedy_agree++;
            int32_t t1 = next, p1 = n + g, s1 = 0;
            uint8_t w1 = 1;
            spk_batch b1 = {.n_tok = 1, .token = &t1, .pos = &p1, .seq = &s1, .want_logits = &w1};
            ck_assert_int_eq(spk_llama_forward(m, &b1, NULL, lg), SPK_OK);
            next = spk_test_argmax(lg, V);
        }
        free(lg);
        spk_llama_free(m);
    }
}

cJSON *spk_test_load_ref(const char *ref_name, const char *model_path, const char *model_desc, const char *script,
                         char **txt)
{
    size_t len;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", SPK_TEST_DATA_DIR, ref_name);
    *txt = spk_test_read_file(path, &len);
    ck_assert_msg(*txt != NULL, "tests/data/%s missing", ref_name);
    cJSON *root = cJSON_Parse(*txt);
    ck_assert_ptr_nonnull(root);
    char got[32];
    snprintf(got, sizeof got, "%016llx", (unsigned long long)spk_test_file_fnv(model_path));
    ck_assert_msg(strcmp(got, cJSON_GetObjectItem(root, "file_fnv1a64")->valuestring) == 0,
                  "the %s file is not the one the reference was made from (hash %s, reference %s): "
                  "the synthetic writer changed; regenerate with %s",
                  model_desc, got, cJSON_GetObjectItem(root, "file_fnv1a64")->valuestring, script);
    return root;
}

const char *spk_test_patched(const char *src, const char *dir, const void *find, size_t flen, long at,
                             const void *repl, size_t n)
{
    static char out[400];
    size_t len;
    char *buf = spk_test_read_file(src, &len);
    ck_assert_ptr_nonnull(buf);
    char *hit = memmem(buf, len, find, flen);
    ck_assert_ptr_nonnull(hit);
    memcpy(hit + at, repl, n);
    snprintf(out, sizeof out, "%s/bad.gguf", dir);
    FILE *f = fopen(out, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
    free(buf);
    return out;
}

void spk_test_expect_load_error(const char *path, spk_status want, const char *needle1, const char *needle2)
{
    spk_gguf_file *f;
    spk_hparams hp;
    spk_weights w;
    ck_assert_msg(spk_gguf_open(path, &f) == SPK_OK, "%s", spk_last_error());
    spk_status st = spk_llama_load(f, &hp, &w);
    const char *msg = spk_last_error();
    ck_assert_msg(st == want, "status %d (%s), want %d", st, msg, want);
    ck_assert_msg(strstr(msg, needle1) && (!needle2 || strstr(msg, needle2)), "message: %s", msg);
    printf("refused as expected: %s\n", msg);
    spk_gguf_close(f);
}

void spk_test_tokens_init(spk_test_tokens *t, int n, int vocab, int mul, int add)
{
    ck_assert_int_le(n, 64);
    for (int i = 0; i < n; i++) {
        t->tk[i] = (i * mul + add) % vocab;
        t->ps[i] = i;
        t->sq[i] = 0;
        t->want[i] = 1;
    }
    t->b = (spk_batch){.n_tok = n, .token = t->tk, .pos = t->ps, .seq = t->sq, .want_logits = t->want};
}

float *spk_test_one_rank_logits(const spk_hparams *hp, const spk_weights *w, const spk_batch *b)
{
    float *ref = malloc(sizeof(float) * (size_t)b->n_tok * (size_t)hp->n_vocab);
    spk_llama *m;
    ck_assert_int_eq(spk_llama_create(hp, w, NULL, 64, 1, b->n_tok, 1, &m), SPK_OK);
    ck_assert_int_eq(spk_llama_forward(m, b, NULL, ref), SPK_OK);
    spk_llama_free(m);
    return ref;
}

void *spk_test_fwd_run(void *arg)
{
    spk_test_fwd_job *j = arg;
    j->st = spk_llama_forward(j->m, j->b, j->in, j->out);
    return NULL;
}

void spk_test_check_moe_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh,
                              const spk_weights *part, int ep)
{
    const spk_moe *mo = &part->layers[0].moe; /* every expert's columns [f0, f1); router whole */
    ck_assert_int_eq(mo->e0, ep ? sh->e0 : 0);
    ck_assert_int_eq(mo->e1, ep ? sh->e1 : hp->n_expert);
    ck_assert_int_eq(mo->gate.n_out, sh->f1 - sh->f0);
    ck_assert_int_eq(mo->down.n_in, sh->f1 - sh->f0);
    ck_assert_int_eq(mo->router.n_out, hp->n_expert);
    ck_assert_ptr_eq(mo->router.data, full->layers[sh->l0].moe.router.data);
}

double spk_test_run_layout(spk_gguf_file *f, const spk_hparams *hp, const spk_weights *full, const spk_batch *b,
                           const float *ref, int pp, int tp, int ep, spk_test_shard_check check)
{
    const int NT = b->n_tok;
    const int E = hp->n_embd, V = hp->n_vocab, world = pp * tp;
    spk_shape shape;
    spk_plan plan;
    ck_assert_int_eq(spk_shape_from_hparams(hp, f->path, &shape), SPK_OK);
    ck_assert_msg(spk_plan_make(&shape, pp, tp, &plan) == SPK_OK, "%s", spk_last_error());
    spk_shard sh[8];
    spk_weights w[8];
    spk_llama *m[8];
    group g[4];
    member mem[8];
    for (int s = 0; s < pp; s++) {
        g[s].tp = tp;
        g[s].sum = malloc(sizeof(float) * NT * (size_t)E);
        pthread_barrier_init(&g[s].bar, NULL, (unsigned)tp);
    }
    for (int r = 0; r < world; r++) {
        ck_assert_int_eq(spk_plan_shard(&plan, r, &sh[r]), SPK_OK);
        if (ep) {
            const int t = r % tp, X = hp->n_expert;
            sh[r].f0 = 0;
            sh[r].f1 = hp->n_ff;
            sh[r].e0 = X * t / tp;
            sh[r].e1 = X * (t + 1) / tp;
        }
        if (tp > 1) {
            mem[r] = (member){&g[r / tp], r % tp};
            sh[r].allreduce = ar;
            sh[r].ar_ctx = &mem[r];
        }
        ck_assert_msg(spk_llama_shard(hp, full, &sh[r], &w[r]) == SPK_OK, "%s", spk_last_error());
        check(hp, full, &sh[r], &w[r], ep);
        ck_assert_int_eq(spk_llama_create(hp, &w[r], &sh[r], 64, 1, NT, 1, &m[r]), SPK_OK);
    }
    float *hidden = malloc(sizeof(float) * NT * (size_t)E), *logits = malloc(sizeof(float) * NT * (size_t)V);
    float *outs[8];
    for (int t = 0; t < tp; t++)
        outs[t] = malloc(sizeof(float) * NT * (size_t)(V > E ? V : E));
    for (int s = 0; s < pp; s++) {
        pthread_t th[8];
        spk_test_fwd_job j[8];
        for (int t = 0; t < tp; t++) {
            j[t] = (spk_test_fwd_job){m[s * tp + t], b, s ? hidden : NULL, outs[t], SPK_OK};
            pthread_create(&th[t], NULL, spk_test_fwd_run, &j[t]);
        }
        for (int t = 0; t < tp; t++) {
            pthread_join(th[t], NULL);
            ck_assert_int_eq(j[t].st, SPK_OK);
        }
        if (s < pp - 1) {
            memcpy(hidden, outs[0], sizeof(float) * NT * (size_t)E);
        } else {
            for (int t = 0; t < tp; t++) {
                const spk_shard *x = &sh[s * tp + t];
                const int nv = x->v1 - x->v0;
                for (int i = 0; i < NT; i++)
                    memcpy(logits + (size_t)i * V + x->v0, outs[t] + (size_t)i * nv, sizeof(float) * (size_t)nv);
            }
        }
    }
    double maxd = 0;
    for (size_t i = 0; i < (size_t)NT * V; i++) {
        double d = fabs((double)logits[i] - ref[i]);
        maxd = d > maxd ? d : maxd;
    }
    for (int r = 0; r < world; r++) {
        spk_llama_free(m[r]);
        spk_llama_weights_free(&w[r]);
    }
    for (int s = 0; s < pp; s++) {
        free(g[s].sum);
        pthread_barrier_destroy(&g[s].bar);
    }
    for (int t = 0; t < tp; t++)
        free(outs[t]);
    free(hidden);
    free(logits);
    printf("%s pp %d x %s %d: max |logit - one rank| %.3g\n", hp->arch, pp, ep ? "ep" : "tp", tp, maxd);
    return maxd;
}

void spk_test_check_f32_reference(cJSON *root, const char *ref_name, const spk_test_loaded *L)
{
    spk_test_cmp_stats s;
    spk_test_compare_section(&L->hp, &L->w, cJSON_GetObjectItem(root, "sequences"), &s, NULL);
    printf("F32 vs transformers (float64): top-1 %d/%d, greedy %d/%d, |logprob diff| over top-8 mean %.2e max %.2e\n",
           s.top1_agree, s.n_pos, s.greedy_agree, s.n_greedy, s.sum_diff / s.n_cmp, s.max_diff);
    ck_assert_int_eq(s.top1_agree, s.n_pos);
    ck_assert_int_eq(s.greedy_agree, s.n_greedy);
    ck_assert_double_lt(s.max_diff, 0.02);
    ck_assert_double_lt(s.sum_diff / s.n_cmp, 5e-3);
    cJSON *lc = cJSON_GetObjectItem(root, "llamacpp"); /* llama.cpp on the file its converter wrote */
    if (lc) {
        spk_test_compare_section(&L->hp, &L->w, lc, &s, NULL);
        printf("F32 vs llama.cpp: top-1 %d/%d, greedy %d/%d, |logprob diff| mean %.2e max %.2e\n", s.top1_agree,
               s.n_pos, s.greedy_agree, s.n_greedy, s.sum_diff / s.n_cmp, s.max_diff);
        ck_assert_int_eq(s.top1_agree, s.n_pos);
        ck_assert_double_lt(s.max_diff, 1e-2);
    } else {
        printf("note: %s has no llama.cpp section (made without the llama.cpp harness)\n", ref_name);
    }
    cJSON *conv = cJSON_GetObjectItem(root, "converter");
    if (conv) /* recorded by the generator: llama.cpp's converter wrote the same tensors */
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(conv, "tensors_equal")));
}

void spk_test_check_quant_case(const char *name, const char *f32_path, const char *path, int ours,
                               spk_test_cmp_stats *st)
{
    size_t len;
    char ref[512], got[32];
    snprintf(ref, sizeof ref, "%s/ref_moe_quant.json", SPK_TEST_DATA_DIR);
    char *txt = spk_test_read_file(ref, &len);
    ck_assert_msg(txt != NULL, "tests/data/ref_moe_quant.json missing");
    cJSON *root = cJSON_Parse(txt);
    ck_assert_ptr_nonnull(root);
    cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "cases"), name);
    ck_assert_msg(c != NULL, "ref_moe_quant.json has no case '%s'", name);
    if (f32_path) {
        snprintf(got, sizeof got, "%016llx", (unsigned long long)spk_test_file_fnv(f32_path));
        ck_assert_msg(strcmp(got, cJSON_GetObjectItem(c, "f32_fnv1a64")->valuestring) == 0,
                      "%s: our F32 file hashes %s, the reference's input %s: the synthetic writer changed; "
                      "regenerate with tests/ref/gptoss-quant-reference.sh", name, got,
                      cJSON_GetObjectItem(c, "f32_fnv1a64")->valuestring);
    }
    if (ours) {
        ck_assert_msg(cJSON_IsTrue(cJSON_GetObjectItem(c, "ours_identical")),
                      "%s: the reference does not record our writer's file as identical to llama-quantize's", name);
    } else {
        snprintf(got, sizeof got, "%016llx", (unsigned long long)spk_test_file_fnv(path));
        ck_assert_msg(strcmp(got, cJSON_GetObjectItem(c, "file_fnv1a64")->valuestring) == 0,
                      "%s: %s hashes %s, the reference's %s: regenerate with tests/ref/gptoss-quant-reference.sh",
                      name, path, got, cJSON_GetObjectItem(c, "file_fnv1a64")->valuestring);
    }
    char types[160] = "";
    size_t n = 0;
    cJSON *ty;
    cJSON_ArrayForEach(ty, cJSON_GetObjectItem(c, "tensor_types"))
        if (n < sizeof types)
            n += (size_t)snprintf(types + n, sizeof types - n, "%s%s %d", n ? ", " : "", ty->string, ty->valueint);
    spk_test_loaded L;
    spk_test_load(path, &L);
    spk_test_compare_section(&L.hp, &L.w, cJSON_GetObjectItem(c, "llamacpp"), st, "SPK_QUANT_DEBUG");
    printf("%s (%s: %s) vs llama.cpp on the same weights: top-1 %d/%d, greedy %d/%d, |logprob diff| over top-8 "
           "mean %.2e max %.2e\n", name, cJSON_GetObjectItem(c, "ftype")->valuestring, types, st->top1_agree, st->n_pos,
           st->greedy_agree, st->n_greedy, st->sum_diff / st->n_cmp, st->max_diff);
    spk_test_unload(&L);
    cJSON_Delete(root);
    free(txt);
}

int spk_test_check_cached_quant_case(const char *name, const char *file, spk_test_cmp_stats *st)
{
    char buf[4096], rel[512];
    snprintf(rel, sizeof rel, "ref-quant/%s", file);
    if (!spk_test_cache_path(buf, sizeof buf, rel)) {
        printf("SKIP: %s vs llama.cpp: %s is absent (tests/ref/gptoss-quant-reference.sh makes it with "
               "llama.cpp's llama-quantize)\n", name, buf);
        return 0;
    }
    spk_test_check_quant_case(name, NULL, buf, 0, st);
    return 1;
}

/* Partition plan and cost model: layouts partition layers, heads, MLP columns and vocabulary
 * exactly; layer ranges are cost-optimal; invalid layouts name their constraint; the cost model
 * agrees in direction with the published two-DGX-Spark study and is monotonic in hardware. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/gguf.h"
#include "plan/cost.h"
#include "plan/plan.h"
#include "model/llama.h"
#include "testutil.h"

static spk_shape preset(const char *name)
{
    spk_shape s;
    ck_assert_int_eq(spk_shape_preset(name, &s), SPK_OK);
    return s;
}

/* Every invariant a plan must satisfy, checked through the rank accessor. */
static void check_partition(const spk_shape *s, int pp, int tp)
{
    spk_plan p;
    ck_assert_msg(spk_plan_make(s, pp, tp, &p) == SPK_OK, "%s pp %d tp %d: %s", s->name, pp, tp, spk_err_msg());
    ck_assert_int_eq(p.world, pp * tp);
    int layer_owner[4096];
    for (int l = 0; l < s->n_layers; l++)
        layer_owner[l] = 0;
    for (int st = 0; st < pp; st++) {
        ck_assert_int_ge(p.stage[st].l1 - p.stage[st].l0, 1);
        ck_assert_int_eq(p.stage[st].l0, st == 0 ? 0 : p.stage[st - 1].l1);
        for (int l = p.stage[st].l0; l < p.stage[st].l1; l++) {
            layer_owner[l]++;
            ck_assert_int_eq(spk_plan_stage_of_layer(&p, l), st);
        }
    }
    for (int l = 0; l < s->n_layers; l++)
        ck_assert_msg(layer_owner[l] == 1, "layer %d owned by %d stages", l, layer_owner[l]);
    ck_assert_int_eq(p.stage[pp - 1].l1, s->n_layers);

    /* TP parts: contiguous, exact cover, KV-group granularity, whole quant blocks */
    const int g = s->n_heads / s->n_kv_heads, blk = spk_shape_block(s);
    int kv = 0, f = 0, fe = 0, v = 0;
    for (int t = 0; t < tp; t++) {
        const spk_plan_tpart *pt = &p.part[t];
        ck_assert_int_eq(pt->kv0, kv);
        ck_assert_int_gt(pt->kv1, pt->kv0);
        ck_assert_int_eq(pt->q0, pt->kv0 * g);
        ck_assert_int_eq(pt->q1, pt->kv1 * g);
        /* as even as possible: sizes differ by at most one, larger first */
        int ksz = pt->kv1 - pt->kv0;
        ck_assert_int_ge(ksz, s->n_kv_heads / tp);
        ck_assert_int_le(ksz, (s->n_kv_heads + tp - 1) / tp);
        if (t > 0)
            ck_assert_int_le(ksz, p.part[t - 1].kv1 - p.part[t - 1].kv0);
        kv = pt->kv1;
        ck_assert_int_eq(pt->f0, f);
        if (tp > 1 && s->n_ff > 0) {
            ck_assert_int_eq(pt->f0 % blk, 0);
            ck_assert_int_eq(pt->f1 % blk, 0);
            ck_assert_int_gt(pt->f1, pt->f0);
            ck_assert_int_le(abs((pt->f1 - pt->f0) - (p.part[0].f1 - p.part[0].f0)), blk);
        }
        f = pt->f1;
        ck_assert_int_eq(pt->fe0, fe);
        if (tp > 1 && s->n_experts > 0) {
            ck_assert_int_eq(pt->fe0 % blk, 0);
            ck_assert_int_gt(pt->fe1, pt->fe0);
        }
        fe = pt->fe1;
        ck_assert_int_eq(pt->v0, v);
        ck_assert_int_le(abs((pt->v1 - pt->v0) - (p.part[0].v1 - p.part[0].v0)), 1);
        v = pt->v1;
        if (tp > 1)
            ck_assert_int_eq((long long)pt->q0 * s->head_dim % blk, 0);
    }
    ck_assert_int_eq(kv, s->n_kv_heads);
    ck_assert_int_eq(f, s->n_ff);
    ck_assert_int_eq(fe, s->n_experts ? s->n_ff_expert : 0);
    ck_assert_int_eq(v, s->n_vocab);

    /* rank mapping: stage = r / tp, tp rank = r % tp; neighbours; head only on the last stage */
    for (int r = 0; r < p.world; r++) {
        spk_rank_slice rs;
        ck_assert_int_eq(spk_plan_rank(&p, r, &rs), SPK_OK);
        ck_assert_int_eq(rs.stage, r / tp);
        ck_assert_int_eq(rs.tp_rank, r % tp);
        ck_assert_int_eq(spk_plan_rank_of(&p, rs.stage, rs.tp_rank), r);
        ck_assert_int_eq(rs.l0, p.stage[rs.stage].l0);
        ck_assert_int_eq(rs.l1, p.stage[rs.stage].l1);
        ck_assert_int_eq(rs.kv0, p.part[rs.tp_rank].kv0);
        ck_assert(rs.embeds == (rs.stage == 0));
        ck_assert(rs.has_head == (rs.stage == pp - 1));
        if (rs.has_head) {
            ck_assert_int_eq(rs.v0, p.part[rs.tp_rank].v0);
            ck_assert_int_eq(rs.v1, p.part[rs.tp_rank].v1);
        } else {
            ck_assert_int_eq(rs.v1 - rs.v0, 0);
        }
        ck_assert_int_eq(rs.prev_rank, rs.stage > 0 ? r - tp : -1);
        ck_assert_int_eq(rs.next_rank, rs.stage < pp - 1 ? r + tp : -1);
        ck_assert(spk_plan_rank_bytes(&p, r) > 0);
    }
    spk_rank_slice rs;
    ck_assert_int_eq(spk_plan_rank(&p, p.world, &rs), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_rank(&p, -1, &rs), SPK_ERR_INVALID_ARG);
}

START_TEST(smollm2_layouts_partition_exactly)
{
    spk_shape s = preset("smollm2-135m");
    const int layouts[][2] = {{1, 1}, {2, 1}, {3, 1}, {1, 2}, {1, 3}, {2, 2}, {30, 1}, {10, 3}};
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
        check_partition(&s, layouts[i][0], layouts[i][1]);
    spk_shape t = preset("tiny");
    check_partition(&t, 1, 4);
    check_partition(&t, 4, 4);
    check_partition(&t, 2, 2);
    spk_shape m = preset("tiny-moe");
    check_partition(&m, 2, 2);
    check_partition(&m, 1, 4);
    const char *big[] = {"llama-3.1-8b", "mistral-small-24b", "gpt-oss-20b", "gpt-oss-120b"};
    for (int i = 0; i < 4; i++) {
        spk_shape b = preset(big[i]);
        check_partition(&b, 2, 1);
        check_partition(&b, 1, 2);
        check_partition(&b, 2, 4);
        check_partition(&b, 1, 8);
        check_partition(&b, 4, 2);
    }
}
END_TEST

START_TEST(smollm2_tp_splits_as_documented)
{
    spk_shape s = preset("smollm2-135m");
    spk_plan p;
    /* 3 KV groups over TP 2: 2 + 1 (query heads 6 + 3); MLP 1536 = 48 blocks: 768 + 768 */
    ck_assert_int_eq(spk_plan_make(&s, 1, 2, &p), SPK_OK);
    ck_assert_int_eq(p.part[0].kv1 - p.part[0].kv0, 2);
    ck_assert_int_eq(p.part[1].kv1 - p.part[1].kv0, 1);
    ck_assert_int_eq(p.part[0].q1 - p.part[0].q0, 6);
    ck_assert_int_eq(p.part[1].q0, 6);
    ck_assert_int_eq(p.part[1].q1, 9);
    ck_assert_int_eq(p.part[0].f1, 768);
    ck_assert_int_eq(p.part[1].f1, 1536);
    ck_assert_int_eq(p.part[0].v1, 24576);
    /* TP 3: 1 + 1 + 1 KV groups, 512 MLP columns each, 16384 vocabulary rows each */
    ck_assert_int_eq(spk_plan_make(&s, 1, 3, &p), SPK_OK);
    for (int t = 0; t < 3; t++) {
        ck_assert_int_eq(p.part[t].kv0, t);
        ck_assert_int_eq(p.part[t].q0, 3 * t);
        ck_assert_int_eq(p.part[t].f1 - p.part[t].f0, 512);
        ck_assert_int_eq(p.part[t].v1 - p.part[t].v0, 16384);
    }
    /* Llama-3.1-8B over TP 3: 14336 = 448 blocks -> 150 + 149 + 149 blocks; 8 KV -> 3 + 3 + 2 */
    spk_shape l = preset("llama-3.1-8b");
    ck_assert_int_eq(spk_plan_make(&l, 1, 3, &p), SPK_OK);
    ck_assert_int_eq(p.part[0].f1, 150 * 32);
    ck_assert_int_eq(p.part[1].f1 - p.part[1].f0, 149 * 32);
    ck_assert_int_eq(p.part[2].kv1 - p.part[2].kv0, 2);
    char buf[256];
    spk_plan_make(&s, 2, 2, &p);
    ck_assert_ptr_nonnull(strstr(spk_plan_describe(&p, buf, sizeof buf), "kv heads 2+1"));
}
END_TEST

/* Brute force: no other contiguous split with >= 1 layer per stage has a smaller largest stage
 * cost (layer bytes; last stage + head, first stage + one embedding row). */
static double best_max_cost(int L, int pp, double c, double ef, double el)
{
    if (pp == 1)
        return L * c + ef + el;
    double best = INFINITY;
    /* recursive over the first stage's size for small cases */
    for (int n0 = 1; n0 <= L - (pp - 1); n0++) {
        double first = n0 * c + ef;
        /* remaining pp-1 stages, first of them no longer "first" */
        double rest;
        if (pp == 2) {
            rest = (L - n0) * c + el;
        } else {
            /* pp 3: split remaining into middle and last */
            rest = INFINITY;
            for (int n1 = 1; n1 <= L - n0 - 1; n1++) {
                double m = fmax(n1 * c, (L - n0 - n1) * c + el);
                /* not fmin(): Debian 12's aarch64 gcc 12.2 -O3 crashes (ICE in
                 * vect_transform_reduction) vectorizing an fmin reduction */
                if (m < rest)
                    rest = m;
            }
        }
        best = fmin(best, fmax(first, rest));
    }
    return best;
}

START_TEST(layer_ranges_minimize_the_largest_stage)
{
    const char *names[] = {"smollm2-135m", "llama-3.1-8b", "gpt-oss-120b", "tiny", "mistral-small-24b"};
    for (int i = 0; i < 5; i++) {
        spk_shape s = preset(names[i]);
        double c = spk_shape_layer_bytes(&s), ef = s.n_embd * spk_shape_bph(&s), el = spk_shape_head_bytes(&s);
        for (int pp = 2; pp <= 3; pp++) {
            spk_plan p;
            ck_assert_int_eq(spk_plan_make(&s, pp, 1, &p), SPK_OK);
            double worst = 0;
            for (int st = 0; st < pp; st++)
                worst = fmax(worst, p.stage[st].cost);
            double opt = best_max_cost(s.n_layers, pp, c, ef, el);
            ck_assert_msg(fabs(worst - opt) <= 1e-9 * opt, "%s pp %d: largest stage %.0f, optimum %.0f", s.name,
                          pp, worst, opt);
        }
    }
    /* The head is expensive: SmolLM2's last stage holds fewer layers than the first. */
    spk_shape s = preset("smollm2-135m");
    spk_plan p;
    spk_plan_make(&s, 2, 1, &p);
    ck_assert_int_lt(p.stage[1].l1 - p.stage[1].l0, p.stage[0].l1 - p.stage[0].l0);
}
END_TEST

/* A stage cost that is a roofline: the larger of a byte term and a flop term, each linear in the
 * layers with its own per-stage extra (what the cost model's stage time looks like). */
typedef struct roof {
    double a, b, ew[8], ef[8];
    int pp;
} roof;

static double roof_cost(void *ctx, int st, int n)
{
    const roof *r = ctx;
    int cls = st == 0 ? 0 : st == r->pp - 1 ? 2 : 1;
    return fmax(n * r->a + r->ew[cls], n * r->b + r->ef[cls]);
}

/* The smallest largest-stage cost over every contiguous split of L layers into pp >= 1 stages. */
static double brute(const roof *r, int L, int pp, int st)
{
    if (st == pp - 1)
        return roof_cost((void *)r, st, L);
    double best = INFINITY;
    for (int n = 1; n <= L - (pp - 1 - st); n++) {
        double here = roof_cost((void *)r, st, n), rest = brute(r, L - n, pp, st + 1);
        double worst = here > rest ? here : rest;
        if (worst < best)
            best = worst;
    }
    return best;
}

START_TEST(rebalance_is_optimal_for_any_roofline_cost)
{
    spk_shape s = preset("tiny");
    unsigned seed = 12345;
    for (int trial = 0; trial < 300; trial++) {
        s.n_layers = 2 + trial % 11;
        int pp = 2 + trial % 3;
        if (pp > s.n_layers)
            continue;
        roof r = {.pp = pp};
        r.a = 1 + rand_r(&seed) % 100;
        r.b = 1 + rand_r(&seed) % 100;
        for (int c = 0; c < 3; c++) {
            r.ew[c] = c == 1 ? 0 : rand_r(&seed) % 400;
            r.ef[c] = c == 1 ? 0 : rand_r(&seed) % 400;
        }
        spk_plan p;
        ck_assert_int_eq(spk_plan_make(&s, pp, 1, &p), SPK_OK);
        ck_assert_int_eq(spk_plan_rebalance(&p, roof_cost, &r), SPK_OK);
        double worst = 0;
        int l = 0;
        for (int st = 0; st < pp; st++) {
            ck_assert_int_eq(p.stage[st].l0, l);
            ck_assert_int_ge(p.stage[st].l1 - p.stage[st].l0, 1);
            l = p.stage[st].l1;
            ck_assert(p.stage[st].cost == roof_cost(&r, st, p.stage[st].l1 - p.stage[st].l0));
            if (p.stage[st].cost > worst) /* (an fmax reduction here crashes aarch64 gcc 12's vectorizer) */
                worst = p.stage[st].cost;
        }
        ck_assert_int_eq(l, s.n_layers);
        double opt = brute(&r, s.n_layers, pp, 0);
        ck_assert_msg(fabs(worst - opt) <= 1e-9 * opt, "trial %d: L %d pp %d: largest stage %g, optimum %g", trial,
                      s.n_layers, pp, worst, opt);
    }
}
END_TEST

static double shrinking(void *ctx, int st, int n)
{
    (void)ctx;
    (void)st;
    return 100.0 - n;
}

START_TEST(time_balance_follows_flops_on_a_cpu)
{
    spk_shape s = preset("smollm2-135m");
    spk_plan bytes, cpu32, gpu1;
    spk_hw cpu, gpu;
    spk_hw_cpu(&cpu);
    spk_hw_dgx_spark(&gpu);
    ck_assert_int_eq(spk_plan_make(&s, 2, 1, &bytes), SPK_OK);
    ck_assert_int_eq(spk_plan_make_ep_at(&s, 2, 1, 1, &cpu, 32, 0, &cpu32), SPK_OK);
    ck_assert_int_eq(spk_plan_make_ep_at(&s, 2, 1, 1, &gpu, 1, 0, &gpu1), SPK_OK);
    int last_b = bytes.stage[1].l1 - bytes.stage[1].l0, last_c = cpu32.stage[1].l1 - cpu32.stage[1].l0,
        last_g = gpu1.stage[1].l1 - gpu1.stage[1].l0;
    /* Bytes: the Q8_0 head (28M weights, 1.06 B each) weighs ~15 Q4_1-sized layers; in flops it is
     * ~8 layers' worth, so on a CPU at batch 32 the last stage takes more layers (measured: the
     * head costs ~9 layers' time, BENCHMARKS.md section 4). A GPU at batch 1 reads: bytes. */
    printf("smollm2-135m pp2 last stage: bytes %d layers, cpu batch 32 %d, gpu batch 1 %d\n", last_b, last_c, last_g);
    ck_assert_int_gt(last_c, last_b + 1);
    ck_assert_int_ge(last_c, 10);
    ck_assert_int_le(last_c, 12);
    ck_assert_int_le(abs(last_g - last_b), 1);
    /* the cost the stages carry is the predicted seconds of the stage, balanced */
    ck_assert(cpu32.stage[0].cost > 0 && cpu32.stage[1].cost > 0);
    ck_assert(fmax(cpu32.stage[0].cost, cpu32.stage[1].cost) < 1.15 * fmin(cpu32.stage[0].cost, cpu32.stage[1].cost));
    /* bad arguments */
    ck_assert_int_eq(spk_plan_make_ep_at(&s, 2, 1, 1, &cpu, 0, 0, &cpu32), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_make_ep_at(&s, 2, 1, 1, &cpu, 4, -1, &cpu32), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_make_ep_at(&s, 2, 1, 1, NULL, 4, 0, &cpu32), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_rebalance(&bytes, shrinking, NULL), SPK_ERR_INVALID_ARG);
    ck_assert_msg(strstr(spk_err_msg(), "grow with its layers") != NULL, "%s", spk_err_msg());
}
END_TEST

static void expect_error(const spk_shape *s, int pp, int tp, spk_status want, const char *fragment)
{
    spk_plan p;
    spk_status st = spk_plan_make(s, pp, tp, &p);
    ck_assert_msg(st == want, "pp %d tp %d: status %d, want %d (%s)", pp, tp, st, want, spk_err_msg());
    ck_assert_msg(strstr(spk_err_msg(), fragment) != NULL, "message '%s' lacks '%s'", spk_err_msg(), fragment);
}

START_TEST(invalid_layouts_name_their_constraint)
{
    spk_shape s = preset("smollm2-135m");
    expect_error(&s, 0, 1, SPK_ERR_INVALID_ARG, "must be >= 1");
    expect_error(&s, 1, -2, SPK_ERR_INVALID_ARG, "must be >= 1");
    expect_error(&s, 31, 1, SPK_ERR_UNSUPPORTED, "pp 31 > 30 layers");
    expect_error(&s, 1, 4, SPK_ERR_UNSUPPORTED, "tp 4 > 3 KV heads: heads are split at KV-group granularity");
    expect_error(&s, 100000, 100000, SPK_ERR_INVALID_ARG, "> 1024");
    expect_error(&s, 300, 1, SPK_ERR_INVALID_ARG, "pp 300 > 256");
    spk_shape t = preset("tiny");
    t.n_ff = 1000; /* not whole 32-blocks */
    expect_error(&t, 1, 2, SPK_ERR_UNSUPPORTED, "n_ff 1000 is not a whole number of 32-element quant blocks");
    check_partition(&t, 2, 1); /* no TP: no block constraint */
    t.n_ff = 64; /* 2 blocks */
    expect_error(&t, 1, 4, SPK_ERR_UNSUPPORTED, "only 2 quant blocks of 32, fewer than tp");
    t = preset("tiny");
    t.head_dim = 12; /* tp 2: second part starts at query head 4 -> column 48 */
    expect_error(&t, 1, 2, SPK_ERR_UNSUPPORTED, "column 48");
    spk_shape m = preset("tiny-moe");
    m.n_ff_expert = 100;
    expect_error(&m, 1, 2, SPK_ERR_UNSUPPORTED, "n_ff_expert 100");
    t = preset("tiny");
    t.n_heads = 6; /* not a multiple of 4 KV heads */
    expect_error(&t, 1, 1, SPK_ERR_INVALID_ARG, "n_heads 6 is not a multiple of n_kv_heads 4");
    t = preset("tiny");
    t.bytes_per_weight = 0;
    expect_error(&t, 1, 1, SPK_ERR_INVALID_ARG, "bytes per element");
    spk_plan p;
    ck_assert_int_eq(spk_plan_make(NULL, 1, 1, &p), SPK_ERR_INVALID_ARG);
    spk_shape x;
    ck_assert_int_eq(spk_shape_preset("llama-9000", &x), SPK_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "gpt-oss-120b"));
}
END_TEST

/* ---- cost model ------------------------------------------------------------------------------ */

static double scen(const char *model, int pp, int tp, int batch, const spk_hw *hw)
{
    spk_shape s = preset(model);
    spk_cost c;
    ck_assert_int_eq(spk_cost_scenario(&s, pp, tp, batch, 1024, 1024, hw, &c), SPK_OK);
    ck_assert(c.tok_s > 0 && isfinite(c.tok_s));
    return c.tok_s;
}

START_TEST(cost_agrees_with_study_direction)
{
    spk_hw hw;
    spk_hw_dgx_spark(&hw);
    /* gpt-oss-120b: PP ahead at batch 64 and 128, TP ahead at batch 1 (balanced 1024/1024) */
    ck_assert(scen("gpt-oss-120b", 2, 1, 128, &hw) > scen("gpt-oss-120b", 1, 2, 128, &hw));
    ck_assert(scen("gpt-oss-120b", 2, 1, 64, &hw) > scen("gpt-oss-120b", 1, 2, 64, &hw));
    ck_assert(scen("gpt-oss-120b", 1, 2, 1, &hw) > scen("gpt-oss-120b", 2, 1, 1, &hw));
    /* Llama-3.1-8B: TP ahead at most of the batch sizes 1..128 */
    const int bs[] = {1, 2, 4, 8, 16, 32, 64, 128};
    int tp_wins = 0;
    for (int i = 0; i < 8; i++)
        tp_wins += scen("llama-3.1-8b", 1, 2, bs[i], &hw) > scen("llama-3.1-8b", 2, 1, bs[i], &hw);
    ck_assert_int_ge(tp_wins, 5);
    /* TP wins at batch 1 for every study model, in decode too */
    const char *models[] = {"gpt-oss-120b", "gpt-oss-20b", "llama-3.1-8b"};
    for (int i = 0; i < 3; i++) {
        spk_shape s = preset(models[i]);
        spk_cost a, b;
        spk_cost_decode(&s, 2, 1, 1, 1024, &hw, &a);
        spk_cost_decode(&s, 1, 2, 1, 1024, &hw, &b);
        ck_assert_msg(b.tok_s > a.tok_s, "%s batch 1: TP %.1f vs PP %.1f", models[i], b.tok_s, a.tok_s);
    }
    /* The planner's own choice follows: TP at batch 1, PP at 128 for gpt-oss-120b */
    spk_shape s = preset("gpt-oss-120b");
    int pp, tp;
    ck_assert_int_eq(spk_plan_choose(&s, 2, 1, &hw, &pp, &tp, NULL), SPK_OK);
    ck_assert(pp == 1 && tp == 2);
    ck_assert_int_eq(spk_plan_choose(&s, 2, 128, &hw, &pp, &tp, NULL), SPK_OK);
    ck_assert(pp == 2 && tp == 1);
    /* ... and it is the all-reduce bandwidth that decides: at link rate TP wins at 128 too */
    spk_hw fast;
    spk_hw_init(&fast);
    ck_assert(scen("gpt-oss-120b", 1, 2, 128, &fast) > scen("gpt-oss-120b", 2, 1, 128, &fast));
}
END_TEST

START_TEST(pp_gives_no_speedup_at_batch_1)
{
    spk_hw hw;
    spk_hw_dgx_spark(&hw);
    const char *models[] = {"llama-3.1-8b", "gpt-oss-120b", "smollm2-135m"};
    for (int i = 0; i < 3; i++) {
        spk_shape s = preset(models[i]);
        spk_cost one, two;
        ck_assert_int_eq(spk_cost_decode(&s, 1, 1, 1, 512, &hw, &one), SPK_OK);
        ck_assert_int_eq(spk_cost_decode(&s, 2, 1, 1, 512, &hw, &two), SPK_OK);
        ck_assert_int_eq(two.micro_batches, 1);
        ck_assert(two.step_s >= one.step_s); /* only one stage works at a time, plus transfers */
        ck_assert(two.step_s < one.step_s * 1.05);
    }
}
END_TEST

START_TEST(moe_reads_only_touched_experts)
{
    spk_hw hw;
    spk_hw_init(&hw);
    spk_shape s = preset("gpt-oss-120b");
    spk_cost c1, c128, c4096;
    spk_cost_decode(&s, 1, 1, 1, 0, &hw, &c1);
    spk_cost_decode(&s, 1, 1, 128, 0, &hw, &c128);
    spk_cost_decode(&s, 1, 1, 4096, 0, &hw, &c4096);
    /* batch 1: attention + router + 4 experts per layer, plus head and one embedding row */
    double E = s.n_embd, Q = s.n_heads * s.head_dim, KV = s.n_kv_heads * s.head_dim;
    double per_layer = (E * (Q + 2 * KV) + Q * E + E * s.n_experts) * s.bytes_per_weight +
                       4 * 3.0 * s.n_ff_expert * E * spk_shape_bpe(&s);
    double want = per_layer * s.n_layers + (double)s.n_vocab * E * 2 + E * 2;
    ck_assert_msg(fabs(c1.weight_bytes - want) < 1e-6 * want, "%g vs %g", c1.weight_bytes, want);
    /* 128 tokens hit E(1-(1-k/E)^B) = 125.9 of 128 experts; thousands hit all */
    double all = spk_shape_layer_bytes(&s) * s.n_layers;
    ck_assert(c128.weight_bytes > 0.95 * all && c128.weight_bytes < all + spk_shape_head_bytes(&s) * 2);
    ck_assert(c4096.weight_bytes > c128.weight_bytes);
}
END_TEST

START_TEST(more_hardware_is_never_slower)
{
    const char *models[] = {"smollm2-135m", "llama-3.1-8b", "gpt-oss-120b", "tiny-moe"};
    const int layouts[][2] = {{1, 1}, {2, 1}, {1, 2}, {2, 2}, {4, 1}, {1, 4}};
    const int bs[] = {1, 3, 16, 128};
    for (int mi = 0; mi < 4; mi++) {
        spk_shape s = preset(models[mi]);
        for (int li = 0; li < 6; li++) {
            spk_plan p;
            if (spk_plan_make(&s, layouts[li][0], layouts[li][1], &p) != SPK_OK)
                continue;
            for (int bi = 0; bi < 4; bi++) {
                for (int knob = 0; knob < 5; knob++) {
                    double prev = 0, prev_sc = 0;
                    for (double f = 0.25; f <= 16; f *= 2) {
                        spk_hw hw;
                        spk_hw_dgx_spark(&hw);
                        switch (knob) {
                        case 0: hw.mem_bw_GBps *= f; break;
                        case 1: hw.tflops *= f; break;
                        case 2: hw.link_Gbps *= f; break;
                        case 3: hw.allreduce_busbw_GBps *= f; break;
                        default: hw.allreduce_latency_us /= f; hw.link_latency_us /= f; break;
                        }
                        spk_cost d, sc;
                        ck_assert_int_eq(spk_cost_decode(&s, p.pp, p.tp, bs[bi], 700, &hw, &d), SPK_OK);
                        ck_assert_int_eq(spk_cost_scenario(&s, p.pp, p.tp, bs[bi], 300, 200, &hw, &sc), SPK_OK);
                        ck_assert_msg(d.tok_s >= prev * (1 - 1e-12), "%s pp%d tp%d b%d knob %d x%g: %g < %g",
                                      s.name, p.pp, p.tp, bs[bi], knob, f, d.tok_s, prev);
                        ck_assert_msg(sc.tok_s >= prev_sc * (1 - 1e-12), "%s pp%d tp%d b%d knob %d x%g: run %g < %g",
                                      s.name, p.pp, p.tp, bs[bi], knob, f, sc.tok_s, prev_sc);
                        prev = d.tok_s;
                        prev_sc = sc.tok_s;
                    }
                }
            }
        }
    }
    /* more context never makes decode faster; a bigger batch never lowers throughput much */
    spk_shape s = preset("llama-3.1-8b");
    spk_hw hw;
    spk_hw_init(&hw);
    spk_cost a, b;
    spk_cost_decode(&s, 1, 1, 8, 100, &hw, &a);
    spk_cost_decode(&s, 1, 1, 8, 4000, &hw, &b);
    ck_assert(b.step_s > a.step_s);
}
END_TEST

START_TEST(prefill_and_choose_behave)
{
    spk_hw hw;
    spk_hw_init(&hw);
    spk_shape s = preset("llama-3.1-8b");
    spk_cost c;
    ck_assert_int_eq(spk_cost_prefill(&s, 1, 1, 4, 2048, &hw, &c), SPK_OK);
    /* long prompts are compute bound: 2 * params * tokens / peak is a lower bound */
    double params = spk_shape_layer_bytes(&s) / 2 * s.n_layers;
    ck_assert(c.step_s >= 2 * params * 4 * 2048 / 100e12);
    ck_assert(c.step_s < 3 * 2 * (params + 1.05e9) * 4 * 2048 / 100e12);
    /* one rank: the only layout */
    int pp, tp;
    ck_assert_int_eq(spk_plan_choose(&s, 1, 8, &hw, &pp, &tp, NULL), SPK_OK);
    ck_assert(pp == 1 && tp == 1);
    /* every layout ranked for SmolLM2 on 6 ranks is valid and sorted */
    spk_shape m = preset("smollm2-135m");
    spk_cost r[8];
    int n;
    ck_assert_int_eq(spk_plan_rank_layouts(&m, 6, 8, 512, 0, &hw, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 3); /* 6x1, 3x2, 2x3; 1x6 is invalid (3 KV heads) */
    for (int i = 1; i < n; i++)
        ck_assert(r[i].tok_s <= r[i - 1].tok_s);
    /* world 7 with 3 KV heads and 30 layers: only pp 7 */
    ck_assert_int_eq(spk_plan_rank_layouts(&m, 7, 8, 512, 0, &hw, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(r[0].pp, 7);
    /* nothing valid: the error names the constraint */
    ck_assert_int_eq(spk_plan_rank_layouts(&m, 31, 8, 512, 0, &hw, r, 8, &n), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "pp 31 > 30 layers"));
    spk_hw bad = hw;
    bad.mem_bw_GBps = 0;
    ck_assert_int_eq(spk_cost_decode(&s, 1, 1, 1, 1, &bad, &c), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_cost_decode(&s, 1, 1, 0, 1, &hw, &c), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_cost_decode(&s, 1, 9, 1, 1, &hw, &c), SPK_ERR_UNSUPPORTED);
}
END_TEST

START_TEST(shape_from_default_model_file)
{
    spk_gguf_file *f;
    ck_assert_int_eq(spk_gguf_open(spk_test_model_path(), &f), SPK_OK);
    spk_hparams hp;
    spk_shape s;
    ck_assert_msg(spk_hparams_read(f, &hp) == SPK_OK, "%s", spk_err_msg());
    ck_assert_msg(spk_shape_from_hparams(&hp, f->path, &s) == SPK_OK, "%s", spk_err_msg());
    spk_gguf_close(f);
    spk_shape p = preset("smollm2-135m");
    ck_assert_int_eq(s.n_layers, p.n_layers);
    ck_assert_int_eq(s.n_embd, p.n_embd);
    ck_assert_int_eq(s.n_heads, p.n_heads);
    ck_assert_int_eq(s.n_kv_heads, p.n_kv_heads);
    ck_assert_int_eq(s.head_dim, p.head_dim);
    ck_assert_int_eq(s.n_ff, p.n_ff);
    ck_assert_int_eq(s.n_vocab, p.n_vocab);
    ck_assert_int_eq(s.tied_embeddings, 1);
    ck_assert(fabs(s.bytes_per_weight - 0.625) < 1e-9);  /* Q4_1 */
    ck_assert(fabs(spk_shape_bph(&s) - 34.0 / 32) < 1e-9); /* Q8_0 token_embd */
    ck_assert_int_eq(spk_shape_block(&s), 32);
    spk_plan a, b;
    ck_assert_int_eq(spk_plan_make(&s, 2, 2, &a), SPK_OK);
    ck_assert_int_eq(spk_plan_make(&p, 2, 2, &b), SPK_OK);
    ck_assert_int_eq(a.stage[0].l1, b.stage[0].l1); /* the preset mirrors the file */
}
END_TEST

/* ---- MoE: the distinct-experts formula, presets, expert parallelism, shapes from files -------- */

START_TEST(distinct_experts_formula)
{
    const int cases[][2] = {{128, 4}, {32, 4}, {128, 8}, {8, 2}, {4, 4}};
    for (int c = 0; c < 5; c++) {
        int n = cases[c][0], k = cases[c][1];
        /* one token touches exactly its k experts; two touch 2k - k^2/n in expectation */
        ck_assert(fabs(spk_moe_distinct_experts(n, k, 1) - k) < 1e-9);
        ck_assert(fabs(spk_moe_distinct_experts(n, k, 2) - (2.0 * k - (double)k * k / n)) < 1e-9);
        /* monotone in b, bounded by min(n, b*k), tends to n */
        double prev = 0;
        for (int b = 1; b <= 4096; b++) {
            double d = spk_moe_distinct_experts(n, k, b);
            ck_assert_msg(d >= prev - 1e-12, "n %d k %d b %d: %g < %g", n, k, b, d, prev);
            ck_assert(d <= n + 1e-9 && d <= (double)b * k + 1e-9);
            if (k < n && d < n - 1e-6)
                ck_assert(d > prev); /* strictly growing until every expert is touched */
            prev = d;
        }
        ck_assert(fabs(spk_moe_distinct_experts(n, k, 1e6) - n) < 1e-6);
    }
    /* the figures docs/PLANNER.md quotes */
    ck_assert(fabs(spk_moe_distinct_experts(128, 4, 64) - 111.2) < 0.05);
    ck_assert(fabs(spk_moe_distinct_experts(128, 8, 8) - 51.6) < 0.05);
    /* degenerate input */
    ck_assert(spk_moe_distinct_experts(0, 4, 8) == 0);
    ck_assert(spk_moe_distinct_experts(128, 0, 8) == 0);
    ck_assert(spk_moe_distinct_experts(128, 4, 0) == 0);
}
END_TEST

START_TEST(moe_presets_match_published_counts)
{
    /* totals and active counts the model cards publish (docs/PLANNER.md section 5) */
    const struct {
        const char *name;
        double total, active, tol;
    } want[] = {{"gpt-oss-120b", 116.83e9, 5.13e9, 0.02}, {"gpt-oss-20b", 20.91e9, 3.61e9, 0.02},
                {"qwen3-30b-a3b", 30.53e9, 3.04e9, 0.02}};
    for (int i = 0; i < 3; i++) {
        spk_shape s = preset(want[i].name);
        double t = spk_shape_total_params(&s), a = spk_shape_active_params(&s);
        ck_assert_msg(fabs(t / want[i].total - 1) < want[i].tol, "%s total %g", want[i].name, t);
        ck_assert_msg(fabs(a / want[i].active - 1) < want[i].tol, "%s active %g", want[i].name, a);
    }
    /* Qwen3-30B-A3B's 3.3B active counts the embedding table too */
    spk_shape q = preset("qwen3-30b-a3b");
    ck_assert(fabs((spk_shape_active_params(&q) + (double)q.n_vocab * q.n_embd) / 3.35e9 - 1) < 0.02);
    ck_assert_int_eq(q.n_layers, 48);
    ck_assert_int_eq(q.n_embd, 2048);
    ck_assert_int_eq(q.n_heads * q.head_dim, 4096); /* query width twice n_embd */
    ck_assert_int_eq(q.n_experts, 128);
    ck_assert_int_eq(q.n_experts_used, 8);
    ck_assert_int_eq(q.n_ff_expert, 768);
    ck_assert_int_eq(q.n_ff, 0);
    spk_shape g = preset("gpt-oss-120b");
    ck_assert_int_eq(g.sliding_window, 128);
    ck_assert_int_eq(g.n_sliding_layers, g.n_layers / 2);
    ck_assert(fabs(g.bytes_per_expert - 17.0 / 32) < 1e-12); /* MXFP4: 4.25 bits per weight */
    /* a dense shape: active == total minus the embedding table */
    spk_shape l = preset("llama-3.1-8b");
    ck_assert(fabs(spk_shape_total_params(&l) - spk_shape_active_params(&l) - (double)l.n_vocab * l.n_embd) < 1);
}
END_TEST

START_TEST(moe_decode_bytes_follow_touched_experts)
{
    spk_hw hw;
    spk_hw_init(&hw);
    const char *models[] = {"qwen3-30b-a3b", "gpt-oss-20b", "gpt-oss-120b"};
    for (int mi = 0; mi < 3; mi++) {
        spk_shape s = preset(models[mi]);
        const double E = s.n_embd, Q = s.n_heads * s.head_dim, KV = s.n_kv_heads * s.head_dim;
        const double fixed = (E * (Q + 2 * KV) + Q * E + E * s.n_experts) * s.bytes_per_weight;
        const double expert = 3.0 * s.n_ff_expert * E * spk_shape_bpe(&s);
        double prev = 0, prev_per_tok = INFINITY;
        for (int b = 1; b <= 256; b *= 2) {
            spk_cost c;
            ck_assert_int_eq(spk_cost_decode(&s, 1, 1, b, 0, &hw, &c), SPK_OK);
            double want = (fixed + spk_moe_distinct_experts(s.n_experts, s.n_experts_used, b) * expert) * s.n_layers +
                          (double)s.n_vocab * E * spk_shape_bph(&s) + b * E * spk_shape_bph(&s);
            ck_assert_msg(fabs(c.weight_bytes - want) < 1e-9 * want, "%s b %d: %g vs %g", s.name, b, c.weight_bytes,
                          want);
            ck_assert(c.weight_bytes > prev);   /* grows with the batch ... */
            ck_assert(c.step_s / b < prev_per_tok); /* ... but slower than the batch: per token it falls */
            prev = c.weight_bytes;
            prev_per_tok = c.step_s / b;
        }
    }
}
END_TEST

/* Expert parallelism as the executor runs it: TP attention, each rank of a TP group holding
 * n_experts/tp whole experts, the group's all-reduce summing the partial MoE outputs. */
START_TEST(ep_plans_validate_and_split_whole_experts)
{
    spk_shape g = preset("gpt-oss-120b"), l = preset("llama-3.1-8b");
    spk_plan p, t;
    /* constraints, each named */
    ck_assert_int_eq(spk_plan_make_ep(&l, 1, 2, 2, &p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "dense model has no experts"));
    ck_assert_int_eq(spk_plan_make_ep(&g, 2, 1, 2, &p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "ep must equal tp"));
    ck_assert_int_eq(spk_plan_make_ep(&g, 1, 3, 3, &p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "ep 3 does not divide the 128 experts"));
    ck_assert_int_eq(spk_plan_make_ep(&g, 1, 2, 0, &p), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_make_ep(&g, 1, 2, 65, &p), SPK_ERR_INVALID_ARG);
    ck_assert_int_eq(spk_plan_make_ep(&g, 1, 16, 16, &p), SPK_ERR_UNSUPPORTED); /* tp 16 > 8 KV heads */
    spk_cost c;
    spk_hw hw;
    spk_hw_dgx_spark(&hw);
    ck_assert_int_eq(spk_cost_decode_ep(&l, 1, 2, 2, 8, 100, &hw, &c), SPK_ERR_UNSUPPORTED);

    /* ep 1 is the plain plan; ep 4 keeps TP's heads and vocabulary, splits the experts 32 each,
     * whole (every column), and holds the same bytes in all as TP 4 */
    ck_assert_int_eq(spk_plan_make_ep(&g, 2, 4, 1, &p), SPK_OK);
    ck_assert_int_eq(spk_plan_make(&g, 2, 4, &t), SPK_OK);
    ck_assert_int_eq(p.ep, 1);
    ck_assert_int_eq(memcmp(p.part, t.part, sizeof p.part), 0);
    ck_assert_int_eq(spk_plan_make_ep(&g, 2, 4, 4, &p), SPK_OK);
    ck_assert_int_eq(p.ep, 4);
    double bytes_ep = 0, bytes_tp = 0;
    for (int r = 0; r < 8; r++) {
        spk_rank_slice a, b;
        ck_assert_int_eq(spk_plan_rank(&p, r, &a), SPK_OK);
        ck_assert_int_eq(spk_plan_rank(&t, r, &b), SPK_OK);
        ck_assert(a.kv0 == b.kv0 && a.kv1 == b.kv1 && a.q0 == b.q0 && a.l0 == b.l0 && a.l1 == b.l1);
        ck_assert_int_eq(a.x0, 32 * a.tp_rank);
        ck_assert_int_eq(a.x1, 32 * (a.tp_rank + 1));
        ck_assert(a.fe0 == 0 && a.fe1 == g.n_ff_expert);
        ck_assert(b.x0 == 0 && b.x1 == 128 && b.fe1 - b.fe0 < g.n_ff_expert);
        bytes_ep += spk_plan_rank_bytes(&p, r);
        bytes_tp += spk_plan_rank_bytes(&t, r);
    }
    ck_assert_msg(fabs(bytes_ep - bytes_tp) < 1e-9 * bytes_tp, "%g vs %g", bytes_ep, bytes_tp);
    char buf[512];
    ck_assert_ptr_nonnull(strstr(spk_plan_describe(&p, buf, sizeof buf), "ep 4: experts 32+32+32+32"));

    /* experts of one quant block: TP cannot split their columns, EP needs not */
    spk_shape m = preset("tiny-moe");
    m.quant_block = 256;
    m.head_dim = 256; /* rank 1's attention-output slice starts at 4 heads x 256: a whole block */
    ck_assert_int_eq(spk_plan_make(&m, 1, 2, &p), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "n_ff_expert 256 has only 1 quant blocks"));
    ck_assert_msg(spk_plan_make_ep(&m, 1, 2, 2, &p) == SPK_OK, "%s", spk_err_msg());
    ck_assert(p.part[1].x0 == 4 && p.part[1].x1 == 8 && p.part[1].fe1 == 256);
}
END_TEST

START_TEST(ep_busiest_rank_reads_more_than_the_mean)
{
    /* E[max over ranks] of the distinct experts hit in each rank's slice */
    for (int ep = 1; ep <= 8; ep *= 2)
        for (int k = 1; k <= 8; k *= 2) {
            double prev = 0;
            for (double b = 1; b <= 4096; b *= 2) {
                double d = spk_moe_distinct_experts(128, k, b), x = spk_moe_max_distinct_per_rank(128, k, ep, b);
                if (ep == 1)
                    ck_assert_double_eq_tol(x, d, 1e-12);
                ck_assert_msg(x >= d / ep - 1e-9, "ep %d k %d b %g: max %g < mean %g", ep, k, b, x, d / ep);
                ck_assert(x <= 128 / ep + 1e-9 && x <= b * k + 1e-9);
                ck_assert(x >= prev - 1e-9); /* grows with the batch */
                prev = x;
            }
            ck_assert_double_eq_tol(prev, 128.0 / ep, 1e-6); /* every expert of the slice at batch 4096 */
        }
    /* batch 1: one rank gets more than k/ep. A Monte Carlo of real top-k routing (docs/PLANNER.md)
     * gives 5.06 for 128 experts, top-8, ep 2, and 3.49 for ep 4; 16.26 for top-4, ep 2, batch 8 */
    ck_assert_double_eq_tol(spk_moe_max_distinct_per_rank(128, 8, 2, 1), 5.06, 0.1);
    ck_assert_double_eq_tol(spk_moe_max_distinct_per_rank(128, 8, 4, 1), 3.49, 0.1);
    ck_assert_double_eq_tol(spk_moe_max_distinct_per_rank(128, 4, 2, 8), 16.26, 0.2);
    ck_assert_double_eq(spk_moe_max_distinct_per_rank(0, 8, 2, 1), 0);
    ck_assert_double_eq(spk_moe_max_distinct_per_rank(128, 8, 0, 1), 0);
    ck_assert_double_eq(spk_moe_max_distinct_per_rank(128, 8, 2, 0), 0);
    ck_assert_double_eq(spk_moe_max_distinct_per_rank(128, 128, 2, 1), 64);
}
END_TEST

START_TEST(ep_cost_is_tp_with_whole_experts)
{
    spk_hw hw;
    spk_hw_dgx_spark(&hw);
    spk_shape q = preset("qwen3-30b-a3b");
    const double E = q.n_embd, hd = q.head_dim;
    double prev_ratio = INFINITY;
    for (int b = 1; b <= 4096; b *= 4) {
        spk_cost e, t;
        ck_assert_int_eq(spk_cost_decode_ep(&q, 1, 2, 2, b, 0, &hw, &e), SPK_OK);
        ck_assert_int_eq(spk_cost_decode(&q, 1, 2, b, 0, &hw, &t), SPK_OK);
        ck_assert(e.ep == 2 && e.tp == 2 && e.executable && t.ep == 1 && t.executable);
        /* the same all-reduces as TP (after attention and after the MoE block) */
        ck_assert_double_eq_tol(e.allreduce_s, t.allreduce_s, 1e-15);
        /* weight bytes: TP attention half, router whole, the busiest rank's experts whole */
        const double q2 = q.n_heads / 2 * hd, kv2 = q.n_kv_heads / 2 * hd;
        double want = ((E * (q2 + 2 * kv2) + q2 * E + E * q.n_experts) * q.bytes_per_weight +
                       spk_moe_max_distinct_per_rank(128, 8, 2, b) * 3.0 * q.n_ff_expert * E * spk_shape_bpe(&q)) *
                          q.n_layers +
                      (double)(q.n_vocab / 2) * E * spk_shape_bph(&q) + b * E * spk_shape_bph(&q);
        ck_assert_msg(fabs(e.weight_bytes - want) < 1e-9 * want, "b %d: %g vs %g", b, e.weight_bytes, want);
        /* TP reads half the columns of every hit expert, the mean: EP never reads less, and the gap
         * closes as the batch touches every expert */
        double ratio = e.weight_bytes / t.weight_bytes;
        ck_assert_msg(ratio >= 1 - 1e-12 && ratio <= prev_ratio + 1e-12, "b %d: EP/TP bytes %g", b, ratio);
        ck_assert(e.tok_s <= t.tok_s * (1 + 1e-12));
        prev_ratio = ratio;
    }
    ck_assert_double_lt(prev_ratio, 1.001);
}
END_TEST

START_TEST(planner_chooses_among_pp_tp_and_ep)
{
    spk_hw hw;
    spk_hw_dgx_spark(&hw);
    spk_cost r[8];
    int n, pp, tp, ep;
    /* every executable layout ranked: qwen3-30b-a3b on 2 ranks has pp2, tp2 and tp2+ep2 */
    spk_shape q = preset("qwen3-30b-a3b"), l = preset("llama-3.1-8b");
    ck_assert_int_eq(spk_plan_rank_layouts(&q, 2, 64, 1024, 1024, &hw, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 3);
    int n_ep = 0;
    for (int i = 0; i < n; i++) {
        ck_assert(r[i].executable);
        n_ep += r[i].ep == 2 && r[i].tp == 2;
        if (i)
            ck_assert(r[i].tok_s <= r[i - 1].tok_s);
    }
    ck_assert_int_eq(n_ep, 1);
    ck_assert_int_eq(spk_plan_rank_layouts_ex(&q, 2, 64, 1024, 1024, &hw, SPK_PLAN_NO_EP, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(spk_plan_rank_layouts(&l, 2, 64, 1024, 1024, &hw, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 2); /* dense: nothing to split by experts */
    ck_assert_int_eq(spk_plan_rank_layouts_ex(&l, 2, 64, 1024, 1024, &hw, 8u, r, 8, &n), SPK_ERR_INVALID_ARG);
    /* where TP can split the experts' columns it reads the mean rank's share and EP the busiest
     * rank's, so gpt-oss-120b at batch 1 stays TP */
    spk_shape g = preset("gpt-oss-120b");
    ck_assert_int_eq(spk_plan_choose(&g, 2, 1, &hw, &pp, &tp, &ep), SPK_OK);
    ck_assert(pp == 1 && tp == 2 && ep == 1);
    /* experts of one 4096-element quant block: TP cannot split them, EP can; large experts, so
     * at batch 1 EP (half the attention, ~1.46 of the 2 routed experts on the busiest rank) beats
     * PP (no speedup at batch 1) and is chosen; without EP the choice is PP */
    spk_shape m = preset("tiny-moe");
    m.n_ff_expert = 4096;
    m.quant_block = 4096;
    m.head_dim = 1024;
    m.n_embd = 4096; /* 31 MB experts, so weight reads dominate the all-reduces */
    spk_hw_init(&hw); /* all-reduces at link rate */
    hw.allreduce_latency_us = 5;
    ck_assert_int_eq(spk_plan_rank_layouts(&m, 2, 1, 64, 0, &hw, r, 8, &n), SPK_OK);
    ck_assert_int_eq(n, 2); /* pp2 tp1 and pp1 tp2 + ep2 */
    ck_assert_msg(r[0].ep == 2 && r[0].tp == 2 && r[0].executable, "first: pp %d tp %d ep %d %g tok/s, then %g",
                  r[0].pp, r[0].tp, r[0].ep, r[0].tok_s, r[1].tok_s);
    ck_assert_int_eq(spk_plan_choose(&m, 2, 1, &hw, &pp, &tp, &ep), SPK_OK);
    ck_assert(pp == 1 && tp == 2 && ep == 2);
    ck_assert_int_eq(spk_plan_choose(&m, 2, 1, &hw, &pp, &tp, NULL), SPK_OK);
    ck_assert(pp == 2 && tp == 1);
}
END_TEST

/* A GGUF v3 file in memory: metadata and tensor infos, zero-filled data. */
typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void g_raw(gbuf *g, const void *d, size_t n)
{
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2 + 256;
        g->p = realloc(g->p, g->cap);
        ck_assert_ptr_nonnull(g->p);
    }
    memcpy(g->p + g->n, d, n);
    g->n += n;
}
static void g_u32(gbuf *g, uint32_t v) { g_raw(g, &v, 4); } /* the test hosts are little-endian */
static void g_u64(gbuf *g, uint64_t v) { g_raw(g, &v, 8); }
static void g_str(gbuf *g, const char *s)
{
    g_u64(g, strlen(s));
    g_raw(g, s, strlen(s));
}

typedef struct gkv {
    const char *key;
    int kind; /* 0 u32, 1 string, 2 bool array */
    uint32_t u;
    const char *s;
    const uint8_t *arr;
} gkv;

typedef struct gtensor {
    const char *name;
    uint32_t type; /* 0 F32, 1 F16, 30 BF16, 39 MXFP4 */
    uint32_t n_dims;
    uint64_t ne[3];
} gtensor;

static uint64_t tensor_bytes(const gtensor *t)
{
    uint64_t el = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        el *= t->ne[d];
    switch (t->type) {
    case 0: return el * 4;
    case 39: return el / 32 * 17;
    default: return el * 2;
    }
}

static gbuf make_gguf(const gkv *kv, int nkv, const gtensor *t, int nt)
{
    gbuf g = {0};
    g_raw(&g, "GGUF", 4);
    g_u32(&g, 3);
    g_u64(&g, (uint64_t)nt);
    g_u64(&g, (uint64_t)nkv);
    for (int i = 0; i < nkv; i++) {
        g_str(&g, kv[i].key);
        if (kv[i].kind == 0) {
            g_u32(&g, 4); /* UINT32 */
            g_u32(&g, kv[i].u);
        } else if (kv[i].kind == 1) {
            g_u32(&g, 8); /* STRING */
            g_str(&g, kv[i].s);
        } else {
            g_u32(&g, 9); /* ARRAY of BOOL */
            g_u32(&g, 7);
            g_u64(&g, kv[i].u);
            g_raw(&g, kv[i].arr, kv[i].u);
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        g_str(&g, t[i].name);
        g_u32(&g, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims; d++)
            g_u64(&g, t[i].ne[d]);
        g_u32(&g, t[i].type);
        g_u64(&g, off);
        off += (tensor_bytes(&t[i]) + 31) / 32 * 32;
    }
    uint8_t zero[32] = {0};
    g_raw(&g, zero, (32 - g.n % 32) % 32);
    for (uint64_t i = 0; i < off; i += 32)
        g_raw(&g, zero, 32);
    return g;
}

/* Open the file described and read its shape (hyperparameters, then the shape of them); the
 * status, and *out. */
static spk_status shape_of(const gkv *kv, int nkv, const gtensor *t, int nt, spk_shape *out)
{
    gbuf g = make_gguf(kv, nkv, t, nt);
    spk_gguf_file *f;
    spk_status st = spk_gguf_open_memory(g.p, g.n, &f);
    ck_assert_msg(st == SPK_OK, "%s", spk_err_msg());
    spk_hparams hp;
    st = spk_hparams_read(f, &hp);
    if (st == SPK_OK)
        st = spk_shape_from_hparams(&hp, "mem.gguf", out);
    spk_gguf_close(f);
    free(g.p);
    return st;
}

START_TEST(shape_from_moe_files)
{
    spk_shape s;
    /* qwen3moe as llama.cpp's converter writes it: its dense feed_forward_length (Qwen3-MoE's
     * intermediate_size, unused by the MoE layers) is ignored; so is a sliding window (the
     * converter writes none, and llama.cpp's qwen3moe graph would apply none) */
    gkv q[] = {{"general.architecture", 1, 0, "qwen3moe", NULL},
               {"qwen3moe.block_count", 0, 2, NULL, NULL},
               {"qwen3moe.embedding_length", 0, 64, NULL, NULL},
               {"qwen3moe.attention.head_count", 0, 4, NULL, NULL},
               {"qwen3moe.attention.head_count_kv", 0, 2, NULL, NULL},
               {"qwen3moe.attention.key_length", 0, 32, NULL, NULL},
               {"qwen3moe.feed_forward_length", 0, 192, NULL, NULL},
               {"qwen3moe.expert_count", 0, 8, NULL, NULL},
               {"qwen3moe.expert_used_count", 0, 2, NULL, NULL},
               {"qwen3moe.expert_feed_forward_length", 0, 32, NULL, NULL},
               {"qwen3moe.attention.sliding_window", 0, 4096, NULL, NULL}};
    gtensor qt[] = {{"token_embd.weight", 1, 2, {64, 100, 1}},
                    {"output.weight", 1, 2, {64, 100, 1}},
                    {"blk.0.attn_q.weight", 1, 2, {64, 128, 1}},
                    {"blk.0.ffn_gate_inp.weight", 0, 2, {64, 8, 1}},
                    {"blk.0.ffn_gate_exps.weight", 1, 3, {64, 32, 8}},
                    {"blk.0.ffn_up_exps.weight", 1, 3, {64, 32, 8}},
                    {"blk.0.ffn_down_exps.weight", 1, 3, {32, 64, 8}}};
    ck_assert_msg(shape_of(q, 11, qt, 7, &s) == SPK_OK, "%s", spk_err_msg());
    ck_assert_int_eq(s.n_layers, 2);
    ck_assert_int_eq(s.head_dim, 32);
    ck_assert_int_eq(s.n_experts, 8);
    ck_assert_int_eq(s.n_experts_used, 2);
    ck_assert_int_eq(s.n_ff_expert, 32);
    ck_assert_int_eq(s.n_ff, 0);
    ck_assert_int_eq(s.sliding_window, 0);
    ck_assert_int_eq(s.n_sliding_layers, 0);
    ck_assert_int_eq(s.n_vocab, 100);
    ck_assert(fabs(spk_shape_bpe(&s) - 2) < 1e-12);

    /* the expert count disagrees with the router / the expert tensors: FORMAT, naming both */
    qt[3].ne[1] = 7;
    ck_assert_int_eq(shape_of(q, 11, qt, 7, &s), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "ffn_gate_inp"));
    qt[3].ne[1] = 8;
    qt[6].ne[2] = 4;
    ck_assert_int_eq(shape_of(q, 11, qt, 7, &s), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "ffn_down_exps"));
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "expert_count 8"));
    qt[6].ne[2] = 8;
    q[8].u = 9; /* more experts used than there are: a malformed file, named by its keys */
    ck_assert_int_eq(shape_of(q, 11, qt, 7, &s), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "expert_used_count 9"));
    q[8].u = 2;

    /* gpt-oss: MXFP4 experts, BF16 attention, a 128-token window on alternate layers */
    gkv o[] = {{"general.architecture", 1, 0, "gpt-oss", NULL},
               {"gpt-oss.block_count", 0, 4, NULL, NULL},
               {"gpt-oss.embedding_length", 0, 64, NULL, NULL},
               {"gpt-oss.attention.head_count", 0, 4, NULL, NULL},
               {"gpt-oss.attention.head_count_kv", 0, 2, NULL, NULL},
               {"gpt-oss.attention.key_length", 0, 16, NULL, NULL},
               {"gpt-oss.feed_forward_length", 0, 64, NULL, NULL},
               {"gpt-oss.expert_count", 0, 4, NULL, NULL},
               {"gpt-oss.expert_used_count", 0, 2, NULL, NULL},
               {"gpt-oss.expert_feed_forward_length", 0, 64, NULL, NULL},
               {"gpt-oss.attention.sliding_window", 0, 128, NULL, NULL},
               {"gpt-oss.attention.sliding_window_pattern", 0, 3, NULL, NULL}};
    gtensor ot[] = {{"token_embd.weight", 30, 2, {64, 100, 1}},
                    {"output.weight", 30, 2, {64, 100, 1}},
                    {"blk.0.attn_q.weight", 30, 2, {64, 64, 1}},
                    {"blk.0.ffn_gate_inp.weight", 0, 2, {64, 4, 1}},
                    {"blk.0.ffn_gate_exps.weight", 39, 3, {64, 64, 4}},
                    {"blk.0.ffn_up_exps.weight", 39, 3, {64, 64, 4}},
                    {"blk.0.ffn_down_exps.weight", 39, 3, {64, 64, 4}}};
    ck_assert_msg(shape_of(o, 11, ot, 7, &s) == SPK_OK, "%s", spk_err_msg());
    ck_assert_int_eq(s.n_experts, 4);
    ck_assert_int_eq(s.n_experts_used, 2);
    ck_assert_int_eq(s.n_ff_expert, 64);
    ck_assert_int_eq(s.n_ff, 0);
    ck_assert_int_eq(s.sliding_window, 128);
    ck_assert_int_eq(s.n_sliding_layers, 2); /* llama.cpp's default period 2: layers 0 and 2 */
    ck_assert(fabs(spk_shape_bpe(&s) - 17.0 / 32) < 1e-12);
    ck_assert(fabs(s.bytes_per_weight - 2) < 1e-12);
    ck_assert_int_eq(s.tied_embeddings, 0);
    /* an explicit period 3: layers 0, 1 and 3 slide */
    ck_assert_int_eq(shape_of(o, 12, ot, 7, &s), SPK_OK);
    ck_assert_int_eq(s.n_sliding_layers, 3);
    /* a per-layer bool array */
    const uint8_t pat[4] = {1, 0, 0, 0};
    o[11] = (gkv){"gpt-oss.attention.sliding_window_pattern", 2, 4, NULL, pat};
    ck_assert_int_eq(shape_of(o, 12, ot, 7, &s), SPK_OK);
    ck_assert_int_eq(s.n_sliding_layers, 1);
    o[11].u = 3; /* an array that does not cover every layer */
    ck_assert_int_eq(shape_of(o, 12, ot, 7, &s), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "3 entries for 4 layers"));

    /* dense qwen3: feed_forward_length is the MLP; head_dim independent of n_embd */
    gkv d[] = {{"general.architecture", 1, 0, "qwen3", NULL},
               {"qwen3.block_count", 0, 2, NULL, NULL},
               {"qwen3.embedding_length", 0, 64, NULL, NULL},
               {"qwen3.attention.head_count", 0, 4, NULL, NULL},
               {"qwen3.attention.head_count_kv", 0, 2, NULL, NULL},
               {"qwen3.attention.key_length", 0, 32, NULL, NULL},
               {"qwen3.feed_forward_length", 0, 96, NULL, NULL}};
    gtensor dt[] = {{"token_embd.weight", 1, 2, {64, 100, 1}}, {"blk.0.ffn_down.weight", 1, 2, {96, 64, 1}}};
    ck_assert_msg(shape_of(d, 7, dt, 2, &s) == SPK_OK, "%s", spk_err_msg());
    ck_assert_int_eq(s.n_ff, 96);
    ck_assert_int_eq(s.n_experts, 0);
    ck_assert_int_eq(s.head_dim, 32);
    ck_assert_int_eq(s.tied_embeddings, 1);
    /* a dense file without feed_forward_length: FORMAT naming the key */
    ck_assert_int_eq(shape_of(d, 6, dt, 2, &s), SPK_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "qwen3.feed_forward_length"));

    /* shared experts (qwen2moe keys): an always-active MLP beside the routed experts */
    gkv m[] = {{"general.architecture", 1, 0, "qwen2moe", NULL},
               {"qwen2moe.block_count", 0, 2, NULL, NULL},
               {"qwen2moe.embedding_length", 0, 64, NULL, NULL},
               {"qwen2moe.attention.head_count", 0, 4, NULL, NULL},
               {"qwen2moe.expert_count", 0, 8, NULL, NULL},
               {"qwen2moe.expert_used_count", 0, 2, NULL, NULL},
               {"qwen2moe.expert_feed_forward_length", 0, 32, NULL, NULL},
               {"qwen2moe.expert_shared_feed_forward_length", 0, 96, NULL, NULL}};
    ck_assert_msg(shape_of(m, 8, dt, 1, &s) == SPK_OK, "%s", spk_err_msg());
    ck_assert_int_eq(s.n_ff, 96);
    ck_assert_int_eq(s.n_experts, 8);
    ck_assert_int_eq(s.head_dim, 16);
}
END_TEST

/* One reader for both users: a Mixtral-style llama file (expert_count, no
 * expert_feed_forward_length: the experts are feed_forward_length wide) has a shape the planner
 * can cost, while the loader, which runs MoE layers for qwen3moe and gpt-oss only, refuses it
 * naming the key; an unknown architecture is named before its missing keys. */
START_TEST(one_reader_for_loader_and_planner)
{
    gkv x[] = {{"general.architecture", 1, 0, "llama", NULL},
               {"llama.block_count", 0, 2, NULL, NULL},
               {"llama.embedding_length", 0, 64, NULL, NULL},
               {"llama.attention.head_count", 0, 4, NULL, NULL},
               {"llama.feed_forward_length", 0, 96, NULL, NULL},
               {"llama.expert_count", 0, 8, NULL, NULL},
               {"llama.expert_used_count", 0, 2, NULL, NULL}};
    gtensor xt[] = {{"token_embd.weight", 1, 2, {64, 100, 1}}};
    spk_shape s;
    ck_assert_msg(shape_of(x, 7, xt, 1, &s) == SPK_OK, "%s", spk_err_msg());
    ck_assert_int_eq(s.n_experts, 8);
    ck_assert_int_eq(s.n_experts_used, 2);
    ck_assert_int_eq(s.n_ff_expert, 96);
    ck_assert_int_eq(s.n_ff, 0);

    gbuf g = make_gguf(x, 7, xt, 1);
    spk_gguf_file *f;
    ck_assert_int_eq(spk_gguf_open_memory(g.p, g.n, &f), SPK_OK);
    spk_hparams hp;
    spk_weights w;
    ck_assert_int_eq(spk_llama_load(f, &hp, &w), SPK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "llama.expert_count 8"));
    spk_gguf_close(f);
    free(g.p);

    gkv u[] = {{"general.architecture", 1, 0, "mamba", NULL}};
    g = make_gguf(u, 1, xt, 1);
    ck_assert_int_eq(spk_gguf_open_memory(g.p, g.n, &f), SPK_OK);
    ck_assert_int_eq(spk_hparams_read(f, &hp), SPK_ERR_FORMAT); /* the reader: the key it misses */
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'mamba.block_count'"));
    ck_assert_int_eq(spk_llama_load(f, &hp, &w), SPK_ERR_UNSUPPORTED); /* the loader: the architecture */
    ck_assert_ptr_nonnull(strstr(spk_err_msg(), "'mamba' is not supported"));
    spk_gguf_close(f);
    free(g.p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("plan");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, smollm2_layouts_partition_exactly);
    tcase_add_test(tc, smollm2_tp_splits_as_documented);
    tcase_add_test(tc, layer_ranges_minimize_the_largest_stage);
    tcase_add_test(tc, rebalance_is_optimal_for_any_roofline_cost);
    tcase_add_test(tc, time_balance_follows_flops_on_a_cpu);
    tcase_add_test(tc, invalid_layouts_name_their_constraint);
    tcase_add_test(tc, cost_agrees_with_study_direction);
    tcase_add_test(tc, pp_gives_no_speedup_at_batch_1);
    tcase_add_test(tc, moe_reads_only_touched_experts);
    tcase_add_test(tc, more_hardware_is_never_slower);
    tcase_add_test(tc, prefill_and_choose_behave);
    tcase_add_test(tc, distinct_experts_formula);
    tcase_add_test(tc, moe_presets_match_published_counts);
    tcase_add_test(tc, moe_decode_bytes_follow_touched_experts);
    tcase_add_test(tc, ep_plans_validate_and_split_whole_experts);
    tcase_add_test(tc, ep_busiest_rank_reads_more_than_the_mean);
    tcase_add_test(tc, ep_cost_is_tp_with_whole_experts);
    tcase_add_test(tc, planner_chooses_among_pp_tp_and_ep);
    tcase_add_test(tc, shape_from_moe_files);
    tcase_add_test(tc, one_reader_for_loader_and_planner);
    if (spk_test_model_path())
        tcase_add_test(tc, shape_from_default_model_file);
    else
        printf("note: default model not found; shape_from_default_model_file not run\n");
    suite_add_tcase(s, tc);
    return spk_test_run(s);
}

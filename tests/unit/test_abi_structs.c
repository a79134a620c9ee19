/* docs/ABI.md's promise for size-prefixed structs, as an older or a newer caller sees it: the
 * library reads min(struct_size, its own size) bytes of a config and fills defaults for fields
 * the caller did not know; a larger struct_size (a newer header) is accepted and the bytes past
 * ours are ignored; results are written up to min(struct_size, own size) and not one byte more. */
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster/cluster_internal.h"
#include "tools/synth.h"
#include "testutil.h"

static char g_model[300];

/* A caller's buffer: our struct followed by bytes we must neither read as fields nor write. */
#define TAIL 64
#define CANARY 0xA5

static int tail_intact(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != CANARY)
            return 0;
    return 1;
}

START_TEST(older_cluster_config_gets_defaults)
{
    /* A caller built before heartbeat_ms existed: its struct ends at peer_timeout_ms, and the
     * memory after it holds whatever (here: a heartbeat of -1, which would be refused). */
    union {
        spk_cluster_config c;
        unsigned char raw[sizeof(spk_cluster_config) + TAIL];
    } u;
    memset(&u, CANARY, sizeof u);
    spk_cluster_config_init(&u.c);
    u.c.struct_size = offsetof(spk_cluster_config, heartbeat_ms);
    u.c.world_size = 1;
    u.c.rank = 0;
    u.c.n_threads = 1;
    u.c.peer_timeout_ms = 5000;
    u.c.heartbeat_ms = -1;
    spk_cluster *c = NULL;
    ck_assert_msg(spk_cluster_open(&u.c, &c) == SPK_OK, "%s", spk_last_error());
    ck_assert_int_eq(c->cfg.heartbeat_ms, 1000); /* the default, not the caller's stray bytes */
    ck_assert_int_eq(c->cfg.peer_timeout_ms, 5000); /* what the caller did set is kept */
    ck_assert_uint_eq(c->cfg.struct_size, sizeof(spk_cluster_config));
    spk_cluster_close(c);
    /* Too small to hold even rank/world: refused, not read past. */
    u.c.struct_size = offsetof(spk_cluster_config, rank);
    ck_assert_int_eq(spk_cluster_open(&u.c, &c), SPK_ERR_INVALID_ARG);
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(newer_cluster_config_is_accepted)
{
    union {
        spk_cluster_config c;
        unsigned char raw[sizeof(spk_cluster_config) + TAIL];
    } u;
    memset(&u, CANARY, sizeof u); /* fields of a newer header we do not know: nonzero garbage */
    spk_cluster_config_init(&u.c);
    u.c.struct_size = sizeof u.raw;
    u.c.world_size = 1;
    u.c.rank = 0;
    u.c.n_threads = 1;
    spk_cluster *c = NULL;
    ck_assert_msg(spk_cluster_open(&u.c, &c) == SPK_OK, "%s", spk_last_error());
    ck_assert_int_eq(spk_cluster_world_size(c), 1);
    spk_cluster_close(c);
    ck_assert(tail_intact(u.raw + sizeof u.c, TAIL));
}
END_TEST

static spk_cluster *one_rank(void)
{
    spk_cluster_config cc;
    spk_cluster_config_init(&cc);
    cc.world_size = 1;
    cc.rank = 0;
    cc.n_threads = 1;
    spk_cluster *cl = NULL;
    ck_assert_int_eq(spk_cluster_open(&cc, &cl), SPK_OK);
    return cl;
}

START_TEST(model_config_older_and_newer)
{
    spk_cluster *cl = one_rank();
    union {
        spk_model_config m;
        unsigned char raw[sizeof(spk_model_config) + TAIL];
    } u;
    /* Older: only struct_size and path known; pp/tp/n_ctx... are garbage in memory. */
    memset(&u, CANARY, sizeof u);
    u.m.struct_size = offsetof(spk_model_config, path) + sizeof(char *);
    u.m.path = g_model;
    spk_model *m = NULL;
    ck_assert_msg(spk_model_load(cl, &u.m, &m) == SPK_OK, "%s", spk_last_error());
    spk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ck_assert_int_eq(spk_model_get_info(m, &info), SPK_OK);
    ck_assert_int_eq(info.n_ctx, 256); /* default: min(model's 256, 4096) */
    spk_model_free(m);
    /* Newer: a struct_size past ours, with garbage after our fields. */
    memset(&u, CANARY, sizeof u);
    spk_model_config_init(&u.m);
    u.m.struct_size = sizeof u.raw;
    u.m.path = g_model;
    u.m.n_ctx = 128;
    u.m.max_seqs = 2;
    ck_assert_msg(spk_model_load(cl, &u.m, &m) == SPK_OK, "%s", spk_last_error());
    ck_assert_int_eq(spk_model_get_info(m, &info), SPK_OK);
    ck_assert_int_eq(info.n_ctx, 128);
    ck_assert(tail_intact(u.raw + sizeof u.m, TAIL));

    /* Results: an older (smaller) info struct gets exactly its bytes, a newer one ours. */
    union {
        spk_model_info i;
        unsigned char raw[sizeof(spk_model_info) + TAIL];
    } o;
    memset(&o, CANARY, sizeof o);
    const size_t old_size = offsetof(spk_model_info, n_ctx);
    o.i.struct_size = old_size;
    ck_assert_int_eq(spk_model_get_info(m, &o.i), SPK_OK);
    ck_assert_int_eq(o.i.n_layers, 2);
    ck_assert_uint_eq(o.i.struct_size, old_size);
    ck_assert(tail_intact(o.raw + old_size, sizeof o.raw - old_size));
    memset(&o, CANARY, sizeof o);
    o.i.struct_size = sizeof o.raw;
    ck_assert_int_eq(spk_model_get_info(m, &o.i), SPK_OK);
    ck_assert_int_eq(o.i.n_ctx, 128);
    ck_assert_uint_eq(o.i.struct_size, sizeof o.raw);
    ck_assert(tail_intact(o.raw + sizeof o.i, TAIL));

    union {
        spk_rank_stats s;
        unsigned char raw[sizeof(spk_rank_stats) + TAIL];
    } r;
    memset(&r, CANARY, sizeof r);
    const size_t old_rs = offsetof(spk_rank_stats, layer_begin);
    r.s.struct_size = old_rs;
    ck_assert_int_eq(spk_model_get_rank_stats(m, 0, &r.s), SPK_OK);
    ck_assert_int_eq(r.s.rank, 0);
    ck_assert(tail_intact(r.raw + old_rs, sizeof r.raw - old_rs));
    memset(&r, CANARY, sizeof r);
    r.s.struct_size = sizeof r.raw;
    ck_assert_int_eq(spk_model_get_rank_stats(m, 0, &r.s), SPK_OK);
    ck_assert_int_eq(r.s.layer_end, 2);
    ck_assert(tail_intact(r.raw + sizeof r.s, TAIL));
    spk_model_free(m);
    spk_cluster_close(cl);
}
END_TEST

int main(void)
{
    char dir[] = "/tmp/spk_abi_XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    snprintf(g_model, sizeof g_model, "%s/tiny.gguf", dir);
    spk_synth_params p;
    spk_synth_params_init(&p);
    p.n_layers = 2;
    p.n_embd = 64;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.n_ff = 128;
    p.n_vocab = 300;
    p.n_ctx_train = 256;
    if (spk_synth_write(g_model, &p) != SPK_OK) {
        fprintf(stderr, "synth: %s\n", spk_last_error());
        return 1;
    }
    Suite *s = suite_create("abi_structs");
    TCase *tc = tcase_create("abi_structs");
    tcase_add_test(tc, older_cluster_config_gets_defaults);
    tcase_add_test(tc, newer_cluster_config_is_accepted);
    tcase_add_test(tc, model_config_older_and_newer);
    suite_add_tcase(s, tc);
    int rc = spk_test_run(s);
    unlink(g_model);
    rmdir(dir);
    return rc;
}

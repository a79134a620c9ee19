/*
 * The public API: argument checks, handle lifetimes, version and build info. Work is done by
 * the modules below (model/, engine/, cluster/); nothing else lives here.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster.h"
#include "common/error.h"
#include "cpu/features.h"
#include "engine/engine.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "plan/plan.h"

struct spk_model {
    spk_cluster *cluster;
    spk_gguf_file *file;
    spk_hparams hp;
    spk_weights w;
    spk_tok *tok;
    spk_exec *exec;
    spk_engine *engine;
    int n_ctx;
    char name[128];
};

struct spk_detokenizer {
    spk_tok_stream s;
};

unsigned spk_version_number(void) { return SPK_VERSION_NUMBER; }

const char *spk_version_string(void) { return SPK_VERSION_STRING; }

static char build_info[256];
static pthread_once_t build_info_once = PTHREAD_ONCE_INIT;

static void build_info_init(void)
{
    /* backends: the ones that run on this machine (the CUDA module loads and finds a GPU) */
    snprintf(build_info, sizeof build_info, "version=%s;backends=%s;transports=tcp%s%s;simd=%s",
             SPK_VERSION_STRING, spk_backend_available(), SPK_HAVE_NCCL ? ",nccl" : "",
             SPK_HAVE_VERBS ? ",verbs" : "", spk_cpu_simd_names());
}

const char *spk_build_info(void)
{
    pthread_once(&build_info_once, build_info_init);
    return build_info;
}

/* Copy a caller's config struct of size `size` into ours, which holds defaults already. */
static spk_status copy_config(void *dst, size_t dst_size, const void *src, size_t src_size, size_t min_size,
                              const char *what)
{
    if (src_size < min_size || src_size > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: struct_size %zu is not a valid size (use the init function)",
                       what, src_size);
    memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
    return SPK_OK;
}

spk_status spk_model_config_init(spk_model_config *cfg)
{
    if (!cfg)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_config_init: cfg is NULL");
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->backend = SPK_BACKEND_CPU;
    return SPK_OK;
}

spk_status spk_request_init(spk_request *req)
{
    if (!req)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_request_init: req is NULL");
    memset(req, 0, sizeof *req);
    req->struct_size = sizeof *req;
    req->max_tokens = 128;
    req->temperature = 0.8f;
    req->top_k = 40;
    req->top_p = 0.95f;
    req->seed = SPK_SEED_RANDOM;
    req->repeat_penalty = 1.0f;
    req->repeat_last_n = 64;
    return SPK_OK;
}

#define STRUCT_INIT(fn, type)                                                                           \
    spk_status fn(type *x)                                                                              \
    {                                                                                                   \
        if (!x)                                                                                         \
            return spk_err(SPK_ERR_INVALID_ARG, #fn ": NULL argument");                                 \
        memset(x, 0, sizeof *x);                                                                        \
        x->struct_size = sizeof *x;                                                                     \
        return SPK_OK;                                                                                  \
    }
STRUCT_INIT(spk_model_info_init, spk_model_info)
STRUCT_INIT(spk_rank_stats_init, spk_rank_stats)
STRUCT_INIT(spk_model_stats_init, spk_model_stats)

spk_status spk_output_init(spk_output *out)
{
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_output_init: out is NULL");
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->token = -1;
    out->position = -1;
    out->logprob = NAN;
    return SPK_OK;
}

static bool eog_cb(const void *ctx, int32_t tok) { return spk_tok_is_eog(ctx, tok); }

spk_status spk_model_load(spk_cluster *cluster, const spk_model_config *cfg_in, spk_model **out)
{
    if (out)
        *out = NULL;
    if (!cluster || !cfg_in || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: NULL argument");
    spk_model_config cfg;
    spk_model_config_init(&cfg);
    spk_status st = copy_config(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size,
                                offsetof(spk_model_config, path) + sizeof(char *), "spk_model_load");
    if (st != SPK_OK)
        return st;
    cfg.struct_size = sizeof cfg;
    if (!cfg.path)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: path is NULL");
    if (cfg.pp < 0 || cfg.tp < 0 || cfg.n_ctx < 0 || cfg.max_seqs < 0 || cfg.max_seqs > 4096 ||
        cfg.n_threads < 0 || cfg.n_threads > 1024 || cfg.queue_capacity < 0 || cfg.queue_capacity > 1 << 20 ||
        cfg.backend < SPK_BACKEND_AUTO || cfg.backend > SPK_BACKEND_CUDA || cfg.device < 0 || cfg.device > 1023 ||
        cfg.ep < 0 || cfg.ep > 64)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "spk_model_load: out of range: pp %d tp %d n_ctx %d max_seqs %d n_threads %d queue %d "
                       "backend %d device %d ep %d", cfg.pp, cfg.tp, cfg.n_ctx, cfg.max_seqs, cfg.n_threads,
                       cfg.queue_capacity, cfg.backend, cfg.device, cfg.ep);
    if (spk_cluster_rank(cluster) != 0)
        return spk_err(SPK_ERR_STATE, "spk_model_load: call on rank 0; workers load inside spk_cluster_serve");
    const int world = spk_cluster_world_size(cluster);
    if ((cfg.pp && world % cfg.pp) || (cfg.tp && world % cfg.tp) || (cfg.pp && cfg.tp && cfg.pp * cfg.tp != world))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: pp %d x tp %d does not match the cluster's %d ranks",
                       cfg.pp, cfg.tp, world);
    if (cfg.ep > 1 && cfg.tp && cfg.tp != cfg.ep)
        return spk_err(SPK_ERR_UNSUPPORTED, "spk_model_load: ep %d with tp %d: experts are split over the ranks of "
                       "a TP group, so ep must equal tp", cfg.ep, cfg.tp);
    if (cfg.ep > 1 && (world % cfg.ep || (cfg.pp && cfg.pp * cfg.ep != world)))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: ep %d (= tp) with pp %d does not match the cluster's "
                       "%d ranks", cfg.ep, cfg.pp, world);
    spk_model *m = calloc(1, sizeof *m);
    if (!m)
        return spk_err(SPK_ERR_NOMEM, "spk_model_load: out of memory");
    m->cluster = cluster;
    if ((st = spk_gguf_open(cfg.path, &m->file)) != SPK_OK)
        goto fail;
    if ((st = spk_llama_load(m->file, &m->hp, &m->w)) != SPK_OK)
        goto fail;
    if (m->file->hf && !spk_gguf_find(m->file, "tokenizer.ggml.model")) {
        st = spk_err(SPK_ERR_NOT_FOUND, "%s: no tokenizer.json (the weights load, but serving a Hugging Face "
                     "directory needs its tokenizer)", cfg.path);
        goto fail;
    }
    if ((st = spk_tok_load(m->file, m->hp.n_vocab, &m->tok)) != SPK_OK)
        goto fail;
    spk_gguf_str name;
    if (spk_gguf_find(m->file, "general.name") && spk_gguf_get_str(m->file, "general.name", &name) == SPK_OK)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(name.len > 127 ? 127 : name.len), name.ptr);
    spk_err_clear();
    m->n_ctx = cfg.n_ctx ? cfg.n_ctx : (m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096);
    if (m->n_ctx > m->hp.n_ctx_train * 4 || m->n_ctx > 1 << 20) {
        st = spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: n_ctx %d too large (model trained on %d)", m->n_ctx,
                     m->hp.n_ctx_train);
        goto fail;
    }
    int max_seqs = cfg.max_seqs ? cfg.max_seqs : 8;
    int threads = cfg.n_threads ? cfg.n_threads : spk_cluster_n_threads(cluster);
    int max_tok = 512;
    if (cfg.ep > 1 && m->hp.n_expert == 0) {
        st = spk_err(SPK_ERR_UNSUPPORTED, "spk_model_load: ep %d: %s is a dense model (%s), it has no experts to "
                     "split", cfg.ep, cfg.path, m->hp.arch);
        goto fail;
    }
    if (cfg.ep > 1 && m->hp.n_expert % cfg.ep != 0) {
        st = spk_err(SPK_ERR_UNSUPPORTED, "spk_model_load: ep %d does not divide the %d experts of %s (every rank "
                     "holds as many)", cfg.ep, m->hp.n_expert, cfg.path);
        goto fail;
    }
    int pp = cfg.pp, tp = cfg.tp, n_ep = cfg.ep > 1 ? cfg.ep : 1;
    if (n_ep > 1 && !tp)
        tp = n_ep;
    if (!pp && !tp) { /* the planner picks, from the model's shape and measured machine/link figures */
        spk_shape shape;
        if ((st = spk_shape_from_hparams(&m->hp, cfg.path, &shape)) != SPK_OK)
            goto fail;
        if ((st = spk_exec_choose_layout(cluster, &shape, max_seqs, NULL, &pp, &tp, cfg.ep == 0 ? &n_ep : NULL)) !=
            SPK_OK)
            goto fail;
    } else if (!pp) {
        pp = world / tp;
    } else if (!tp) {
        tp = world / pp;
    }
    const int block_size = 16;
    const uint64_t block_bytes = (uint64_t)m->hp.n_layers * 2u * block_size * (uint64_t)m->hp.n_kv_heads *
                                 (uint64_t)m->hp.head_dim * sizeof(uint16_t);
    uint64_t n_blocks = cfg.kv_cache_bytes ? cfg.kv_cache_bytes / block_bytes
                                           : (uint64_t)max_seqs * (uint64_t)((m->n_ctx + block_size - 1) / block_size);
    if (n_blocks < 1 || n_blocks > (1u << 26)) {
        st = spk_err(SPK_ERR_INVALID_ARG, "spk_model_load: a KV cache of %llu bytes holds %llu blocks of %d positions "
                     "(%llu bytes each)", (unsigned long long)cfg.kv_cache_bytes, (unsigned long long)n_blocks,
                     block_size, (unsigned long long)block_bytes);
        goto fail;
    }
    /* logits rows per step: one per sequence, plus up to 32 for prompt log-probs */
    int echo_rows = max_tok - max_seqs < 32 ? (max_tok - max_seqs > 0 ? max_tok - max_seqs : 0) : 32;
    spk_exec_params xp = {cfg.path, pp, tp, m->n_ctx, (int)n_blocks, block_size, max_tok, threads,
                          max_seqs + echo_rows, cfg.backend, cfg.device, n_ep};
    if ((st = spk_exec_open(world > 1 ? cluster : NULL, m->file, &m->hp, &m->w, &xp, &m->exec)) != SPK_OK)
        goto fail;
    spk_engine_params ep = {
        .exec = m->exec, .max_tok = max_tok, .n_blocks = (int)n_blocks, .block_size = block_size,
        .n_vocab = m->hp.n_vocab, .n_ctx = m->n_ctx, .max_seqs = max_seqs, .echo_rows = echo_rows,
        .queue_capacity = cfg.queue_capacity ? cfg.queue_capacity : 1024, .is_eog = eog_cb, .eog_ctx = m->tok, .tok = m->tok,
    };
    if ((st = spk_engine_start(&ep, &m->engine)) != SPK_OK)
        goto fail;
    *out = m;
    return SPK_OK;
fail:
    spk_model_free(m);
    return st;
}

spk_status spk_model_free(spk_model *m)
{
    if (!m)
        return SPK_OK;
    spk_engine_stop(m->engine);
    spk_exec_close(m->exec);
    spk_tok_free(m->tok);
    spk_llama_weights_free(&m->w);
    spk_gguf_close(m->file);
    free(m);
    return SPK_OK;
}

spk_status spk_model_get_info(const spk_model *m, spk_model_info *info)
{
    if (!m || !info)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_info: NULL argument");
    size_t size = info->struct_size;
    if (size < offsetof(spk_model_info, n_layers) || size > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_info: struct_size %zu is not valid", size);
    spk_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = size;
    snprintf(mi.arch, sizeof mi.arch, "%s", m->hp.arch);
    snprintf(mi.name, sizeof mi.name, "%s", m->name);
    mi.n_layers = m->hp.n_layers;
    mi.n_embd = m->hp.n_embd;
    mi.n_heads = m->hp.n_heads;
    mi.n_kv_heads = m->hp.n_kv_heads;
    mi.head_dim = m->hp.head_dim;
    mi.n_ff = m->hp.n_ff;
    mi.n_vocab = m->hp.n_vocab;
    mi.n_ctx_train = m->hp.n_ctx_train;
    mi.n_ctx = m->n_ctx;
    mi.bos_token = spk_tok_bos(m->tok);
    mi.eos_token = spk_tok_eos(m->tok);
    mi.n_params = m->w.n_params;
    mi.weight_bytes = m->w.n_bytes;
    memcpy(info, &mi, size < sizeof mi ? size : sizeof mi);
    return SPK_OK;
}

spk_status spk_model_get_rank_stats(spk_model *m, int rank, spk_rank_stats *stats)
{
    if (!m || !stats)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_rank_stats: NULL argument");
    size_t size = stats->struct_size;
    if (size < offsetof(spk_rank_stats, rank) + sizeof(int) || size > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_rank_stats: struct_size %zu is not valid", size);
    spk_rank_stats st;
    spk_status r = spk_exec_rank_stats(m->exec, rank, &st);
    if (r != SPK_OK)
        return r;
    st.struct_size = size;
    memcpy(stats, &st, size < sizeof st ? size : sizeof st);
    return SPK_OK;
}

spk_status spk_model_get_stats(spk_model *m, spk_model_stats *stats)
{
    if (!m || !stats)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_stats: NULL argument");
    size_t size = stats->struct_size;
    if (size < sizeof(size_t) || size > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_model_get_stats: struct_size %zu is not valid", size);
    spk_engine_stats_t es;
    spk_engine_stats(m->engine, &es);
    spk_model_stats out = {
        .struct_size = size, .n_queued = es.n_queued, .n_running = es.n_running,
        .kv_blocks_total = es.kv_blocks_total, .kv_blocks_free = es.kv_blocks_free,
        .kv_block_size = es.kv_block_size, .n_preempted = es.n_preempted, .n_generated = es.n_generated,
        .n_submit_waiting = es.n_submit_waiting,
    };
    memcpy(stats, &out, size < sizeof out ? size : sizeof out);
    return SPK_OK;
}

spk_status spk_tokenize(const spk_model *m, const char *text, size_t len, int add_special, int parse_special,
                        int32_t *tokens, size_t cap, size_t *n_out)
{
    if (!m || (!text && len) || (!tokens && cap) || !n_out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_tokenize: NULL argument");
    return spk_tok_encode(m->tok, text ? text : "", len, add_special != 0, parse_special != 0, tokens, cap, n_out);
}

spk_status spk_detokenize(const spk_model *m, const int32_t *tokens, size_t n, int skip_special, char *buf,
                          size_t cap, size_t *n_out)
{
    if (!m || (!tokens && n) || (!buf && cap) || !n_out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_detokenize: NULL argument");
    return spk_tok_decode(m->tok, tokens, n, skip_special != 0, buf, cap, n_out);
}

spk_status spk_detokenizer_new(const spk_model *m, int skip_special, spk_detokenizer **out)
{
    if (out)
        *out = NULL;
    if (!m || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_detokenizer_new: NULL argument");
    spk_detokenizer *d = calloc(1, sizeof *d);
    if (!d)
        return spk_err(SPK_ERR_NOMEM, "spk_detokenizer_new: out of memory");
    spk_tok_stream_init(&d->s, m->tok, skip_special != 0);
    *out = d;
    return SPK_OK;
}

spk_status spk_detokenizer_push(spk_detokenizer *d, int32_t token, char *buf, size_t cap, size_t *n_out)
{
    if (!d || (!buf && cap) || !n_out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_detokenizer_push: NULL argument");
    return spk_tok_stream_push(&d->s, token, buf, cap, n_out);
}

void spk_detokenizer_free(spk_detokenizer *d) { free(d); }

spk_status spk_chat_apply(const spk_model *m, const spk_chat_message *msgs, size_t n_msgs, int add_assistant,
                          char *buf, size_t cap, size_t *n_out)
{
    spk_chat_options o;
    spk_chat_options_init(&o);
    o.add_assistant = add_assistant;
    return spk_chat_apply_opts(m, msgs, n_msgs, &o, buf, cap, n_out);
}

spk_status spk_chat_options_init(spk_chat_options *o)
{
    if (!o)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_chat_options_init: NULL argument");
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->add_assistant = 1;
    o->enable_thinking = 1;
    return SPK_OK;
}

spk_status spk_chat_apply_opts(const spk_model *m, const spk_chat_message *msgs, size_t n_msgs,
                               const spk_chat_options *opts, char *buf, size_t cap, size_t *n_out)
{
    if (!m || (!msgs && n_msgs) || (!buf && cap) || !n_out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_chat_apply: NULL argument");
    spk_chat_options o;
    spk_chat_options_init(&o);
    if (opts) {
        spk_status st = copy_config(&o, sizeof o, opts, opts->struct_size, sizeof(size_t), "spk_chat_apply_opts");
        if (st != SPK_OK)
            return st;
        o.struct_size = sizeof o;
    }
    for (size_t i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content)
            return spk_err(SPK_ERR_INVALID_ARG, "spk_chat_apply: message %zu has a NULL role or content", i);
    return spk_chat_render_ex(m->file, o.enable_thinking ? 0u : SPK_CHAT_NO_THINKING, msgs, n_msgs,
                              o.add_assistant != 0, buf, cap, n_out);
}

spk_status spk_submit(spk_model *m, const spk_request *reqs, size_t n, uint64_t *ids)
{
    if (!m || (!reqs && n) || (!ids && n))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit: NULL argument");
    if (n > 1 << 20)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit: %zu requests at once", n);
    return spk_engine_submit(m->engine, reqs, n, ids);
}

spk_status spk_submit_wait(spk_model *m, const spk_request *reqs, size_t n, uint64_t *ids,
                           int timeout_ms)
{
    if (!m || (!reqs && n) || (!ids && n))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit_wait: NULL argument");
    if (n > 1 << 20)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit_wait: %zu requests at once", n);
    if (timeout_ms < -1)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_submit_wait: timeout_ms %d (use -1 for none)",
                       timeout_ms);
    return spk_engine_submit_wait(m->engine, reqs, n, ids, timeout_ms);
}

spk_status spk_poll(spk_model *m, spk_event *events, size_t cap, size_t *n_out, int timeout_ms)
{
    if (n_out)
        *n_out = 0;
    if (!m || !events || cap == 0 || !n_out || timeout_ms < -1)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_poll: NULL argument, zero capacity or timeout %d", timeout_ms);
    return spk_engine_poll(m->engine, events, cap, n_out, timeout_ms);
}

/* The stride of a caller's output array: out[0].struct_size, at least up to `status`. */
static spk_status output_stride(const spk_output *out, const char *what, size_t *stride)
{
    *stride = out->struct_size;
    if (*stride < offsetof(spk_output, status) + sizeof(int32_t) || *stride > 65536)
        return spk_err(SPK_ERR_INVALID_ARG, "%s: out[0].struct_size %zu is not valid (use spk_output_init)", what,
                       *stride);
    return SPK_OK;
}

spk_status spk_poll_outputs(spk_model *m, spk_output *out, size_t cap, size_t *n_out, int timeout_ms)
{
    if (n_out)
        *n_out = 0;
    if (!m || !out || cap == 0 || !n_out || timeout_ms < -1)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_poll_outputs: NULL argument, zero capacity or timeout %d",
                       timeout_ms);
    size_t stride;
    spk_status st = output_stride(out, "spk_poll_outputs", &stride);
    if (st != SPK_OK)
        return st;
    return spk_engine_poll_outputs(m->engine, out, stride, cap, n_out, timeout_ms);
}

spk_status spk_poll_request(spk_model *m, uint64_t request_id, spk_output *out, size_t cap, size_t *n_out,
                            int timeout_ms)
{
    if (n_out)
        *n_out = 0;
    if (!m || !out || cap == 0 || !n_out || timeout_ms < -1)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_poll_request: NULL argument, zero capacity or timeout %d",
                       timeout_ms);
    size_t stride;
    spk_status st = output_stride(out, "spk_poll_request", &stride);
    if (st != SPK_OK)
        return st;
    return spk_engine_poll_request(m->engine, request_id, out, stride, cap, n_out, timeout_ms);
}

spk_status spk_cancel(spk_model *m, uint64_t request_id)
{
    if (!m)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cancel: model is NULL");
    return spk_engine_cancel(m->engine, request_id);
}

spk_status spk_cluster_serve(spk_cluster *cluster)
{
    if (!cluster)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_serve: cluster is NULL");
    if (spk_cluster_rank(cluster) == 0)
        return spk_err(SPK_ERR_STATE, "spk_cluster_serve: rank 0 is the driver and does not serve");
    spk_exec_worker *wk = NULL;
    spk_status st = spk_exec_worker_register(cluster, &wk);
    if (st != SPK_OK)
        return st;
    st = spk_cluster_serve_loop(cluster);
    spk_exec_worker_free(cluster, wk);
    return st;
}

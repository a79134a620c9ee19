/*
 * libsparkinfer — public C API.
 *
 * An embeddable library that serves a decoder-only LLM from one process or a cluster of
 * processes (pipeline and tensor parallelism over a pluggable transport).
 *
 * Usage outline:
 *   spk_cluster_config cc; spk_cluster_config_init(&cc);      // 1 rank unless configured
 *   spk_cluster *cl; spk_cluster_open(&cc, &cl);
 *   spk_model_config mc; spk_model_config_init(&mc); mc.path = "model.gguf";
 *   spk_model *m; spk_model_load(cl, &mc, &m);
 *   spk_request r; spk_request_init(&r); r.prompt = ids; r.n_prompt = n; r.max_tokens = 64;
 *   uint64_t id; spk_submit(m, &r, 1, &id);
 *   spk_event ev[16]; size_t n; spk_poll(m, ev, 16, &n, 1000);  // until a finish event
 *   // or rich outputs (text, log-probs, error messages): spk_output_init(&out[0]);
 *   // spk_poll_outputs(m, out, 16, &n, 1000); a request with private_events = 1 is read only
 *   // with spk_poll_request(m, id, out, 16, &n, 1000), so components sharing a model keep
 *   // their own outputs.
 *   spk_model_free(m); spk_cluster_close(cl);
 *
 * Conventions:
 *  - Every function returns an spk_status (or a value documented otherwise). On error the
 *    calling thread's detail message is available from spk_last_error().
 *  - Configuration and request structs start with `struct_size`; always fill them with the
 *    matching *_init() function first. The library reads min(struct_size, its own size) bytes
 *    and uses defaults for the rest, so fields can be appended without breaking the ABI.
 *  - Threads: functions marked "thread-safe" may be called concurrently from any thread.
 *    Everything else must not race with calls on the same handle. Close/free functions must not
 *    race with any other call on that handle.
 *  - The ABI promise is in docs/ABI.md.
 */
#ifndef SPARKINFER_H
#define SPARKINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SPK_BUILDING_LIBRARY) && defined(__GNUC__)
#define SPK_API __attribute__((visibility("default")))
#else
#define SPK_API
#endif

/** Compile-time version of the header. */
#define SPK_VERSION_MAJOR 0
#define SPK_VERSION_MINOR 1
#define SPK_VERSION_PATCH 0
/** major*10000 + minor*100 + patch; this formula never changes. */
#define SPK_VERSION_NUMBER (SPK_VERSION_MAJOR * 10000 + SPK_VERSION_MINOR * 100 + SPK_VERSION_PATCH)
#define SPK_VERSION_STRING "0.1.0"

/**
 * Status codes. Numbers are fixed forever; a retired code keeps its slot.
 */
typedef enum spk_status {
    SPK_OK = 0,                 /**< success */
    SPK_ERR_INVALID_ARG = 1,    /**< NULL pointer, bad size, value out of range */
    SPK_ERR_NOMEM = 2,          /**< allocation failed */
    SPK_ERR_IO = 3,             /**< file or socket I/O failed */
    SPK_ERR_FORMAT = 4,         /**< malformed model file or network message */
    SPK_ERR_UNSUPPORTED = 5,    /**< feature, type or layout not supported (yet) */
    SPK_ERR_TIMEOUT = 6,        /**< a deadline passed */
    SPK_ERR_PEER_LOST = 7,      /**< a cluster peer died or stopped answering */
    SPK_ERR_AUTH = 8,           /**< cluster key check failed */
    SPK_ERR_VERSION = 9,        /**< library or protocol version mismatch */
    SPK_ERR_BUSY = 10,          /**< queue full; retry later */
    SPK_ERR_NOT_FOUND = 11,     /**< unknown id, key or name */
    SPK_ERR_STATE = 12,         /**< call not valid in the handle's current state */
    SPK_ERR_CANCELLED = 13,     /**< operation was cancelled */
    SPK_ERR_INTERNAL = 14,      /**< a bug in the library; please report */
    SPK_ERR_TRANSPORT = 15,     /**< transport failure other than a lost peer */
    SPK_ERR_TOO_LONG = 16,      /**< input longer than a limit (context, buffer) */
    SPK_STATUS_COUNT            /**< number of codes; do not use as a status */
} spk_status;

/* ---------------------------------------------------------------------------------------- */
/* Version, build info, errors, logging                                                     */
/* ---------------------------------------------------------------------------------------- */

/** Runtime version as SPK_VERSION_NUMBER of the library actually loaded. Thread-safe. */
SPK_API unsigned spk_version_number(void);

/** Runtime version string ("0.1.0"); static storage. Thread-safe. */
SPK_API const char *spk_version_string(void);

/**
 * Build information: a static string of `key=value` pairs separated by ';', e.g.
 * "version=0.1.0;backends=cpu;transports=tcp,nccl;simd=avx2,avx512". Thread-safe.
 */
SPK_API const char *spk_build_info(void);

/** Static English name of a status code ("invalid argument"); never NULL. Thread-safe. */
SPK_API const char *spk_status_str(spk_status status);

/**
 * Detail message of the last error on the calling thread (e.g. "tensor blk.3.attn_q.weight:
 * offset 9120 + size 4096 past end of file (11000 bytes)").
 *  - Every function that returns an error status sets it (on the calling thread) before
 *    returning; a function that succeeds leaves it as it was (it is not cleared), so read it
 *    only right after a call that failed. Empty string if no call on this thread has failed.
 *  - Per thread: another thread's failures never change it. Errors of a request inside the
 *    engine do not set it: they come in that request's spk_output.message.
 *  - The pointer stays valid for the thread's lifetime; its contents change at the next failing
 *    call on this thread (copy the text to keep it).
 * Thread-safe.
 */
SPK_API const char *spk_last_error(void);

/** Log levels for spk_set_log_callback. */
typedef enum spk_log_level {
    SPK_LOG_DEBUG = 0,
    SPK_LOG_INFO = 1,
    SPK_LOG_WARN = 2,
    SPK_LOG_ERROR = 3,
    SPK_LOG_NONE = 4
} spk_log_level;

/** A log sink: called with a NUL-terminated message without trailing newline. */
typedef void (*spk_log_fn)(spk_log_level level, const char *msg, void *user);

/**
 * Route library log messages of at least `min_level` to `fn` (NULL: default sink, which writes
 * to stderr at WARN and above). The library never writes to stdout. Thread-safe; messages already
 * being emitted may still reach the old sink. Logging is rate-limited so that a peer cannot flood
 * the sink: messages that differ only in their numbers (addresses, ports, counts) are one kind,
 * each kind gets at most 20 lines per second and all kinds together 200; the rest are counted
 * and reported later as one line "N similar message(s) suppressed ..., last: <message>".
 */
SPK_API void spk_set_log_callback(spk_log_fn fn, void *user, spk_log_level min_level);

/* ---------------------------------------------------------------------------------------- */
/* Cluster                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/** An open cluster membership (one per process). Opaque. */
typedef struct spk_cluster spk_cluster;

/** Cluster configuration; fill with spk_cluster_config_init() first. */
typedef struct spk_cluster_config {
    size_t struct_size;         /**< sizeof(spk_cluster_config), set by init */
    int rank;                   /**< this process's rank; -1: from SPK_RANK, else a launcher's
                                     OMPI_COMM_WORLD_RANK, PMI_RANK or SLURM_PROCID, else 0 */
    int world_size;             /**< number of ranks; 0: from SPK_WORLD_SIZE, else the same
                                     launcher's size (OMPI_COMM_WORLD_SIZE, PMI_SIZE,
                                     SLURM_STEP_NUM_TASKS/SLURM_NTASKS), else 1 */
    const char *coordinator;    /**< "host:port" rank 0 listens on; NULL: SPK_COORDINATOR, else
                                     MASTER_ADDR:MASTER_PORT (port default 29500), else
                                     "127.0.0.1:29500" (docs/LAUNCH.md) */
    const char *cluster_key;    /**< shared secret; NULL: SPK_CLUSTER_KEY, else none */
    const char *transport;      /**< "auto" (default), "tcp", "nccl", "verbs", an absolute plugin
                                     path or "NAME.so" from the plugin directory (transport.h) */
    int allow_open_cluster;     /**< 1: allow a keyless cluster on a non-loopback address */
    int n_threads;              /**< compute threads per rank; 0: number of online CPUs */
    int connect_timeout_ms;     /**< how long ranks wait for each other at open (default 30000) */
    int peer_timeout_ms;        /**< a silent peer is declared lost after this (default 10000) */
    int heartbeat_ms;           /**< heartbeat period (default 1000) */
    /**
     * 1: send the TCP transport's data (activations, all-reduces) without per-record MACs, for
     * trusted point-to-point links where their cost matters (see BENCHMARKS.md); every rank must
     * say the same. 0 (default): authenticated, unless the environment has SPK_DATA_AUTH=0.
     * The control plane is always authenticated.
     */
    int unauthenticated_data;
} spk_cluster_config;

/** Fill `cfg` with defaults and set struct_size. Returns SPK_ERR_INVALID_ARG on NULL. */
SPK_API spk_status spk_cluster_config_init(spk_cluster_config *cfg);

/**
 * Join (rank > 0) or start (rank 0) a cluster. With world_size 1 no socket is opened.
 * On success *out owns the membership; release it with spk_cluster_close().
 * Errors: INVALID_ARG, TIMEOUT (peers did not arrive), AUTH, VERSION, IO, UNSUPPORTED.
 * On error *out is NULL and nothing is left open.
 */
SPK_API spk_status spk_cluster_open(const spk_cluster_config *cfg, spk_cluster **out);

/**
 * Worker loop (rank > 0): execute the driver's commands until the driver closes the cluster
 * (returns SPK_OK) or a peer is lost (SPK_ERR_PEER_LOST). On rank 0: SPK_ERR_STATE.
 */
SPK_API spk_status spk_cluster_serve(spk_cluster *cluster);

/** This process's rank, or -1 if `cluster` is NULL. Thread-safe. */
SPK_API int spk_cluster_rank(const spk_cluster *cluster);

/** Number of ranks, or -1 if `cluster` is NULL. Thread-safe. */
SPK_API int spk_cluster_world_size(const spk_cluster *cluster);

/**
 * Leave the cluster and free it. Always returns (within the peer timeout, even if peers are
 * dead). All models loaded on the cluster must have been freed. NULL is a no-op returning SPK_OK.
 */
SPK_API spk_status spk_cluster_close(spk_cluster *cluster);

/* ---------------------------------------------------------------------------------------- */
/* Model                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/** A loaded model together with its serving engine. Opaque. */
typedef struct spk_model spk_model;

/** Model configuration; fill with spk_model_config_init() first. */
/** Where a model computes (spk_model_config.backend). */
typedef enum spk_backend_type {
    SPK_BACKEND_AUTO = 0,       /**< the GPU when the CUDA backend is installed and finds one, else the CPU */
    SPK_BACKEND_CPU = 1,
    SPK_BACKEND_CUDA = 2        /**< UNSUPPORTED at load if the module, its CUDA runtime or a GPU is missing */
} spk_backend_type;

typedef struct spk_model_config {
    size_t struct_size;         /**< sizeof(spk_model_config), set by init */
    const char *path;           /**< GGUF file (required) */
    int pp;                     /**< pipeline stages; 0: auto (1 on a single rank) */
    int tp;                     /**< tensor-parallel ranks per stage; 0: auto */
    int n_ctx;                  /**< max tokens per sequence; 0: min(model's, 4096) */
    int max_seqs;               /**< max sequences in flight; 0: default (8) */
    int n_threads;              /**< compute threads; 0: the cluster's setting */
    int queue_capacity;         /**< max queued requests before SPK_ERR_BUSY; 0: 1024 */
    uint64_t kv_cache_bytes;    /**< KV cache of the whole model (each rank holds its share), in
                                     blocks of 16 positions; 0: max_seqs full contexts. When blocks
                                     run out the newest sequences are preempted and recomputed. */
    int backend;                /**< spk_backend_type, the same on every rank. Default CPU: the CUDA
                                     backend is chosen explicitly (or by AUTO) until it has passed
                                     the GPU suite on hardware (docs/BACKENDS.md) */
    int device;                 /**< GPU ordinal on each rank (default 0) */
    /* Appended (docs/ABI.md). */
    int ep;                     /**< expert parallelism of a MoE model: 0 auto (the planner may
                                     choose it when it also picks pp and tp), 1 off, N > 1: the
                                     experts are split whole over the N ranks of each TP group, so N
                                     must equal tp and divide the expert count (UNSUPPORTED
                                     otherwise, and on a dense model) */
} spk_model_config;

/** Fill `cfg` with defaults and set struct_size. */
SPK_API spk_status spk_model_config_init(spk_model_config *cfg);

/**
 * Load a model on the cluster (call on rank 0; workers follow inside spk_cluster_serve) and start
 * its engine thread. The file is memory-mapped and validated before any use.
 * Errors: INVALID_ARG, IO, FORMAT (malformed file, message names the field), UNSUPPORTED
 * (architecture, tensor type or layout), NOMEM. On error *out is NULL.
 */
SPK_API spk_status spk_model_load(spk_cluster *cluster, const spk_model_config *cfg,
                                  spk_model **out);

/**
 * Stop the engine (in-flight requests end with a cancelled event that nobody will poll),
 * unmap and free. NULL is a no-op returning SPK_OK. Must not race with other calls on `model`.
 */
SPK_API spk_status spk_model_free(spk_model *model);

/** Shape and identity of a loaded model. */
typedef struct spk_model_info {
    size_t struct_size;         /**< set by the caller to sizeof(spk_model_info) */
    char arch[32];              /**< "llama" */
    char name[128];             /**< general.name, truncated */
    int n_layers;
    int n_embd;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int n_ff;
    int n_vocab;
    int n_ctx_train;            /**< context length the model was trained with */
    int n_ctx;                  /**< context length this load serves */
    int32_t bos_token;          /**< -1 if none */
    int32_t eos_token;          /**< -1 if none */
    uint64_t n_params;          /**< number of weight elements */
    uint64_t weight_bytes;      /**< bytes of weights in the file */
} spk_model_info;

/** Zero `info` and set struct_size (docs/ABI.md: call before spk_model_get_info). */
SPK_API spk_status spk_model_info_init(spk_model_info *info);

/**
 * Fill `info` (caller sets info->struct_size first, e.g. with spk_model_info_init). Thread-safe.
 */
SPK_API spk_status spk_model_get_info(const spk_model *model, spk_model_info *info);

/** What one rank of a loaded model holds. */
typedef struct spk_rank_stats {
    size_t struct_size;         /**< set by the caller to sizeof(spk_rank_stats) */
    int rank;
    int stage;                  /**< pipeline stage of the rank */
    int tp_rank;                /**< index inside its tensor-parallel group */
    int layer_begin, layer_end; /**< layers [begin, end) */
    uint64_t weight_bytes;      /**< bytes of weights the rank's share covers */
    uint64_t resident_bytes;    /**< the rank process's resident memory now (includes file pages
                                     the kernel mapped in; depends on the page cache) */
    uint64_t kv_cache_bytes;    /**< bytes of the rank's KV cache */
    uint64_t owned_bytes;       /**< what the rank holds for the model: its weights (mapped slices
                                     and copied ones) plus everything it allocated to run them
                                     (KV cache, activations, step buffers); independent of the
                                     page cache */
    /* Appended (docs/ABI.md): where the rank's step time goes, summed since load. A step is one
     * micro-batch through this rank. On one machine handoff_ns is exact; across machines it is
     * only as good as the hosts' wall clocks agree (it compares CLOCK_REALTIME stamps). */
    uint64_t n_steps;           /**< steps (micro-batches) this rank ran */
    uint64_t compute_ns;        /**< in the forward pass (its layers; logits on the last stage) */
    uint64_t recv_wait_ns;      /**< blocked receiving hidden states from the previous stage
                                     (pipeline bubbles plus the hand-offs; 0 on stage 0) */
    uint64_t send_ns;           /**< sending hidden states to the next stage */
    uint64_t handoff_ns;        /**< hand-offs into this stage: from the previous stage finishing
                                     a micro-batch (or this rank starting to wait for it, if
                                     later) to this rank holding its hidden states */
    uint64_t n_handoffs;        /**< hand-offs counted in handoff_ns */
    /* Appended (docs/ABI.md). */
    int expert_begin, expert_end; /**< MoE: experts [begin, end) the rank runs (every one of them,
                                     column-sliced under TP, unless expert parallelism split them
                                     whole); 0, 0 for a dense model */
} spk_rank_stats;

/** Zero `stats` and set struct_size (call before spk_model_get_rank_stats). */
SPK_API spk_status spk_rank_stats_init(spk_rank_stats *stats);

/**
 * Ask rank `rank` of the model's cluster what it holds (a control-plane round trip for a worker).
 * Caller sets stats->struct_size first. Errors: INVALID_ARG (rank out of range, bad size),
 * PEER_LOST. Thread-safe.
 */
SPK_API spk_status spk_model_get_rank_stats(spk_model *model, int rank, spk_rank_stats *stats);

/** Serving counters of a loaded model. */
typedef struct spk_model_stats {
    size_t struct_size;         /**< set by the caller to sizeof(spk_model_stats) */
    int n_queued;               /**< requests waiting for a sequence slot */
    int n_running;              /**< requests holding a slot */
    int kv_blocks_total;        /**< KV cache blocks */
    int kv_blocks_free;
    int kv_block_size;          /**< positions per block */
    uint64_t n_preempted;       /**< sequences preempted for lack of KV blocks (recomputed later) */
    uint64_t n_generated;       /**< tokens generated since load */
    int n_submit_waiting;       /**< spk_submit_wait callers blocked for queue room */
} spk_model_stats;

/** Zero `stats` and set struct_size (call before spk_model_get_stats). */
SPK_API spk_status spk_model_stats_init(spk_model_stats *stats);

/** Fill `stats` (caller sets stats->struct_size first, e.g. with spk_model_stats_init).
 *  Thread-safe. */
SPK_API spk_status spk_model_get_stats(spk_model *model, spk_model_stats *stats);

/* ---------------------------------------------------------------------------------------- */
/* Tokens and text                                                                          */
/* ---------------------------------------------------------------------------------------- */

/**
 * Tokenize `len` bytes of UTF-8 `text` into `tokens` (capacity `cap`). `add_special`: prepend
 * BOS if the model asks for it. `parse_special`: turn special-token text (e.g. "<|im_end|>")
 * into its token instead of ordinary text. *n_out receives the number of tokens; if it exceeds
 * `cap`, SPK_ERR_TOO_LONG is returned, nothing past `cap` is written, and *n_out is the size
 * needed. Thread-safe.
 */
SPK_API spk_status spk_tokenize(const spk_model *model, const char *text, size_t len,
                                int add_special, int parse_special, int32_t *tokens, size_t cap,
                                size_t *n_out);

/**
 * Turn tokens back into UTF-8 bytes (special tokens rendered as their text unless
 * `skip_special`). Output is not NUL-terminated. Capacity rules as spk_tokenize. Thread-safe.
 */
SPK_API spk_status spk_detokenize(const spk_model *model, const int32_t *tokens, size_t n,
                                  int skip_special, char *buf, size_t cap, size_t *n_out);

/** Incremental detokenizer that only emits complete UTF-8 sequences. Opaque. */
typedef struct spk_detokenizer spk_detokenizer;

/** Create a streaming detokenizer for `model` (which must outlive it). */
SPK_API spk_status spk_detokenizer_new(const spk_model *model, int skip_special,
                                       spk_detokenizer **out);

/**
 * Feed one token; append to `buf` the bytes that now form complete UTF-8 characters (bytes of a
 * character split across tokens are held back). If `cap` is too small: SPK_ERR_TOO_LONG, the
 * state is unchanged and *n_out is the size needed. Pass token -1 to flush: held-back bytes of an
 * incomplete sequence come out as U+FFFD. INVALID_ARG for a token out of the vocabulary.
 */
SPK_API spk_status spk_detokenizer_push(spk_detokenizer *d, int32_t token, char *buf,
                                        size_t cap, size_t *n_out);

/** Free a detokenizer; NULL is a no-op. */
SPK_API void spk_detokenizer_free(spk_detokenizer *d);

/** One chat message for spk_chat_apply. */
typedef struct spk_chat_message {
    const char *role;           /**< "system", "user" or "assistant" */
    const char *content;        /**< UTF-8, NUL-terminated */
} spk_chat_message;

/**
 * Render messages with the model's chat template (ChatML for SmolLM2, Llama-3 headers for
 * Llama 3); `add_assistant` appends the opening of the assistant turn. NUL-terminates `buf` if
 * room; *n_out excludes the NUL. Capacity rules as spk_tokenize. Errors: UNSUPPORTED if the
 * model has no template this library knows. Thread-safe.
 */
SPK_API spk_status spk_chat_apply(const spk_model *model, const spk_chat_message *msgs,
                                  size_t n_msgs, int add_assistant, char *buf, size_t cap,
                                  size_t *n_out);

/** Options of spk_chat_apply_opts; fill with spk_chat_options_init() first. */
typedef struct spk_chat_options {
    size_t struct_size;         /**< sizeof(spk_chat_options), set by init */
    int add_assistant;          /**< append the opening of the assistant turn (default 1) */
    int enable_thinking;        /**< default 1. 0: Qwen3's enable_thinking=false, as
                                     transformers' apply_chat_template and llama.cpp render it:
                                     an empty "<think>\n\n</think>\n\n" after the assistant
                                     opening, so the model answers without reasoning. Templates
                                     without a thinking switch ignore it. */
} spk_chat_options;

/** Defaults: add_assistant 1, enable_thinking 1. INVALID_ARG for NULL. */
SPK_API spk_status spk_chat_options_init(spk_chat_options *opts);

/**
 * spk_chat_apply with options (NULL: the defaults, i.e. spk_chat_apply with add_assistant 1).
 * The library reads min(opts->struct_size, its own size) bytes (docs/ABI.md); a struct_size
 * below sizeof(size_t) or above 65536 is INVALID_ARG. Otherwise as spk_chat_apply.
 */
SPK_API spk_status spk_chat_apply_opts(const spk_model *model, const spk_chat_message *msgs,
                                       size_t n_msgs, const spk_chat_options *opts, char *buf,
                                       size_t cap, size_t *n_out);

/* ---------------------------------------------------------------------------------------- */
/* Requests and events                                                                      */
/* ---------------------------------------------------------------------------------------- */

/** A generation request; fill with spk_request_init() first. */
typedef struct spk_request {
    size_t struct_size;         /**< sizeof(spk_request), set by init; also the array stride */
    const int32_t *prompt;      /**< prompt token ids (copied at submit) */
    size_t n_prompt;            /**< >= 1 */
    int max_tokens;             /**< tokens to generate, >= 1 (default 128) */
    float temperature;          /**< 0: greedy (default 0.8) */
    int top_k;                  /**< 0: off (default 40) */
    float top_p;                /**< 1: off (default 0.95) */
    uint64_t seed;              /**< RNG seed; the same seed gives the same tokens.
                                     SPK_SEED_RANDOM (default): a random one per request */
    const int32_t *stop_tokens; /**< generation ends after emitting one of these (copied) */
    size_t n_stop;
    int ignore_eos;             /**< 1: do not stop at the model's end-of-generation tokens */
    /* ---- appended in 0.1 (issue 11); a caller whose struct_size ends before a field gets its
     * default. Each field's default is what spk_request_init sets. ---- */
    const char *text;           /**< prompt as UTF-8, used when prompt == NULL and n_prompt == 0:
                                     tokenized by the library as spk_tokenize(add_special = 1,
                                     parse_special = 1) would; copied at submit */
    size_t text_len;            /**< bytes of text */
    const char *const *stop_strings; /**< output text that ends the request (SPK_FINISH_STOP); the
                                     matched text and anything after it are not emitted; matched
                                     across token boundaries; copied at submit */
    size_t n_stop_strings;      /**< <= SPK_MAX_STOP_STRINGS; each 1..SPK_MAX_STOP_LEN bytes of
                                     valid UTF-8, NUL-terminated */
    float min_p;                /**< 0: off (default). Keeps the tokens whose probability (after
                                     temperature) is at least min_p times the top token's */
    float repeat_penalty;       /**< 1: off (default). llama.cpp semantics: a logit of a token
                                     among the last repeat_last_n tokens of the sequence (prompt
                                     included) is divided by it if positive, multiplied if not */
    int repeat_last_n;          /**< window of repeat_penalty (default 64; 0: off; -1: context) */
    float frequency_penalty;    /**< 0: off; -2..2. OpenAI semantics over the generated tokens:
                                     logit -= count * frequency_penalty */
    float presence_penalty;     /**< 0: off; -2..2: logit -= presence_penalty if count > 0 */
    int logprobs;               /**< 1: each token output carries the sampled token's log-prob */
    int top_logprobs;           /**< 0..SPK_MAX_TOP_LOGPROBS alternatives per token output
                                     (implies logprobs) */
    int prompt_logprobs;        /**< 1: outputs for the prompt tokens come first ("echo"): one
                                     per prompt position (finish NONE, n_generated 0, no text),
                                     the first with logprob NAN, each later one the log-prob of
                                     that prompt token given the ones before, with top_logprobs
                                     alternatives. Prompts are then computed in chunks of at
                                     most 32 positions per step */
    int private_events;         /**< 1: this request's outputs go only to spk_poll_request(id),
                                     never to spk_poll / spk_poll_outputs */
} spk_request;

/** Limits of spk_request fields. */
#define SPK_MAX_STOP_STRINGS 16
#define SPK_MAX_STOP_LEN 256
#define SPK_MAX_TOP_LOGPROBS 20
/** Bytes of text[] in spk_output (NUL included). */
#define SPK_OUTPUT_TEXT_CAP 512
/** spk_request.seed value that asks the library to draw a random seed (spk_request_init's
 *  default, from getrandom()); any other value is used as is: the same seed gives the same
 *  tokens. */
#define SPK_SEED_RANDOM UINT64_MAX

/** Fill `req` with defaults and set struct_size. */
SPK_API spk_status spk_request_init(spk_request *req);

/** Why a request ended. */
typedef enum spk_finish {
    SPK_FINISH_NONE = 0,        /**< not finished: more events follow */
    SPK_FINISH_LENGTH = 1,      /**< max_tokens reached */
    SPK_FINISH_STOP = 2,        /**< a stop or end-of-generation token was produced */
    SPK_FINISH_CANCELLED = 3,   /**< spk_cancel() */
    SPK_FINISH_ERROR = 4        /**< see the event's status */
} spk_finish;

/** A token event, or a final event carrying the finish reason. */
typedef struct spk_event {
    uint64_t request_id;
    int32_t token;              /**< generated token, -1 on an event without a token */
    int32_t position;           /**< index of the token in the sequence (prompt included) */
    int32_t finish;             /**< spk_finish; the last event of a request is non-NONE */
    int32_t status;             /**< spk_status; SPK_OK unless finish == SPK_FINISH_ERROR */
    uint64_t time_ns;           /**< CLOCK_MONOTONIC time at which the engine produced the event:
                                     measure TTFT/TPOT with it, not with the time of spk_poll */
    int32_t reserved[2];        /**< zero */
} spk_event;

/** A token and its log-probability. */
typedef struct spk_token_logprob {
    int32_t token;
    float logprob;
} spk_token_logprob;

/**
 * A rich output of a request (spk_poll_outputs, spk_poll_request): what a server needs. Fill
 * (at least out[0]) with spk_output_init() first; arrays of outputs use out[0].struct_size as
 * their stride, and the library writes min(struct_size, its own size) bytes of each.
 *
 * A request's outputs: with prompt_logprobs first one per prompt token (position < n_prompt,
 * n_generated 0); then one per generated token (token >= 0), each possibly followed by
 * text-only outputs (token -1) when its text does not fit text[]; the last output of a request
 * has finish != SPK_FINISH_NONE (it may carry a token, or be token -1).
 */
typedef struct spk_output {
    size_t struct_size;         /**< sizeof(spk_output), set by spk_output_init */
    uint64_t request_id;
    int32_t token;              /**< -1: no token (final output, or text carried over) */
    int32_t position;           /**< index of the token in the sequence (prompt included); -1 */
    int32_t finish;             /**< spk_finish */
    int32_t status;             /**< spk_status; SPK_OK unless finish == SPK_FINISH_ERROR */
    uint64_t time_ns;           /**< CLOCK_MONOTONIC time the engine produced it (as spk_event) */
    float logprob;              /**< of token: the model's log-softmax (raw logits, before
                                     penalties and temperature); NAN unless requested */
    int32_t n_top;              /**< entries in top[] */
    spk_token_logprob top[SPK_MAX_TOP_LOGPROBS]; /**< most likely first (same log-softmax) */
    uint32_t text_len;          /**< bytes in text */
    char text[SPK_OUTPUT_TEXT_CAP]; /**< UTF-8 this output adds to the request's output text:
                                     complete characters only, special tokens skipped, held back
                                     while it could be the start of a stop string;
                                     NUL-terminated. Longer text continues in outputs with
                                     token -1 */
    int32_t n_prompt;           /**< prompt tokens (after tokenizing a text prompt) */
    int32_t n_generated;        /**< tokens generated so far, this one included */
    char message[256];          /**< on SPK_FINISH_ERROR: the detail, with numbers (e.g. "prompt
                                     is 5123 tokens; the context holds 4096"); else "" */
} spk_output;

/** Fill `out` with an empty output (token -1, logprob NAN) and set struct_size. */
SPK_API spk_status spk_output_init(spk_output *out);

/**
 * Queue `n` requests (array stride reqs[0].struct_size) and return their ids in `ids` at once.
 * All-or-nothing: INVALID_ARG if any request is malformed (NULL prompt, n_prompt 0, token out of
 * vocabulary, bad sampling values), BUSY if the queue cannot take all of them. A prompt too long
 * for the context is accepted and then ends with an error event (TOO_LONG). Thread-safe.
 *
 * Fairness: the queue is FIFO (requests reach sequence slots in the order they were queued; a
 * preempted one goes back to the front). spk_submit never waits: it returns BUSY when the queue
 * is full, and also while spk_submit_wait callers are blocked (they go first), so a caller that
 * retries BUSY in a loop gets no place in line and, under load, may need many retries. Use
 * spk_submit_wait to get a place in line instead.
 */
SPK_API spk_status spk_submit(spk_model *model, const spk_request *reqs, size_t n,
                              uint64_t *ids);

/**
 * spk_submit that waits up to `timeout_ms` (-1: no limit, 0: same as spk_submit) for queue room.
 * Blocked callers are served strictly in arrival order: a caller is queued after every caller
 * that began waiting before it and before every later one, and plain spk_submit does not
 * overtake it, so under contention no submitter starves or has to retry. Errors as spk_submit;
 * BUSY when the time ran out (nothing was queued) or at once when `n` exceeds queue_capacity;
 * STATE if the model is being freed; the engine's fatal error (e.g. PEER_LOST) if it failed
 * while waiting. Thread-safe; must not race with spk_model_free.
 */
SPK_API spk_status spk_submit_wait(spk_model *model, const spk_request *reqs, size_t n,
                                   uint64_t *ids, int timeout_ms);

/**
 * Wait up to `timeout_ms` (0: do not wait, -1: forever) for events; copy at most `cap` into
 * `events` and set *n_out. Returns SPK_OK (possibly with *n_out 0 on timeout), or the engine's
 * fatal error (e.g. PEER_LOST). Thread-safe; each event goes to exactly one caller.
 * Requests with private_events never appear here. Text, log-probs and error messages are not
 * delivered by spk_poll (use spk_poll_outputs); stop strings still end requests with
 * SPK_FINISH_STOP.
 */
SPK_API spk_status spk_poll(spk_model *model, spk_event *events, size_t cap, size_t *n_out,
                            int timeout_ms);

/**
 * spk_poll with rich outputs: for requests without private_events. Each output goes to exactly
 * one caller of spk_poll / spk_poll_outputs. `out` holds `cap` outputs of stride
 * out[0].struct_size (fill out[0] with spk_output_init). Returns as spk_poll. Thread-safe.
 */
SPK_API spk_status spk_poll_outputs(spk_model *model, spk_output *out, size_t cap, size_t *n_out,
                                    int timeout_ms);

/**
 * Outputs of one request submitted with private_events (as spk_poll_outputs otherwise).
 * SPK_ERR_NOT_FOUND if the id is unknown, not private, or its final output was already returned
 * (the id is forgotten then). Thread-safe: any number of threads may each poll their own
 * requests at once. Bound: a private request holds at most 64 undelivered outputs; while it
 * holds that many it is not scheduled (its KV stays, other requests run on), so poll it.
 * Outputs of a private request nobody polls to its end are freed with the model.
 */
SPK_API spk_status spk_poll_request(spk_model *model, uint64_t request_id, spk_output *out,
                                    size_t cap, size_t *n_out, int timeout_ms);

/**
 * Cancel a request: it ends with a SPK_FINISH_CANCELLED event; its KV blocks are freed at the
 * engine's next step, before that event is delivered (a micro-batch already computing it
 * finishes first).
 * NOT_FOUND if the id is unknown or already finished. Thread-safe.
 */
SPK_API spk_status spk_cancel(spk_model *model, uint64_t request_id);

#ifdef __cplusplus
}
#endif

#endif /* SPARKINFER_H */

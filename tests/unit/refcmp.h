/* Helpers shared by the model tests that compare against a reference JSON (test_qwen3,
 * test_qwen3moe, test_gptoss) and run PP/TP/EP layouts against one rank (those and test_shard). */
#ifndef SPK_TEST_REFCMP_H
#define SPK_TEST_REFCMP_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"
#include "model/llama.h"

/* A model file opened and loaded (spk_test_load fails the test if it does not load). */
typedef struct spk_test_loaded {
    spk_gguf_file *f;
    spk_hparams hp;
    spk_weights w;
} spk_test_loaded;
void spk_test_load(const char *path, spk_test_loaded *L);
void spk_test_unload(spk_test_loaded *L);

/* FNV-1a 64 of a whole file (fails the test if it cannot be read). */
uint64_t spk_test_file_fnv(const char *path);

/* Agreement of our log-probs and greedy continuation with one reference section. */
typedef struct spk_test_cmp_stats {
    int n_pos, top1_agree, greedy_agree, n_greedy, n_cmp;
    double max_diff, sum_diff;
} spk_test_cmp_stats;

/* Our log-probs and greedy continuation (incremental decode through the KV cache) against one
 * reference section (an array of sequences). debug_env: when that environment variable is set,
 * print every top-8 entry off by more than 0.02 (NULL: never). */
void spk_test_compare_section(const spk_hparams *hp, const spk_weights *w, cJSON *seqs, spk_test_cmp_stats *st,
                              const char *debug_env);

/* The F32 check shared by the architecture tests: against the reference's "sequences"
 * (transformers, float64) every top-1 and greedy token agrees, |log-prob diff| max < 0.02 and
 * mean < 5e-3; against its "llamacpp" section (when the generator had the llama.cpp harness)
 * every top-1 agrees and max < 1e-2; its "converter" record (when present) says llama.cpp's
 * converter wrote the same tensors. `ref_name` names the file in messages. */
void spk_test_check_f32_reference(cJSON *root, const char *ref_name, const spk_test_loaded *L);

/* Parse tests/data/<ref_name> (*txt: its text, to free after cJSON_Delete) and check that its
 * "file_fnv1a64" is the hash of model_path, else fail naming model_desc and the script that
 * regenerates the reference. */
cJSON *spk_test_load_ref(const char *ref_name, const char *model_path, const char *model_desc, const char *script,
                         char **txt);

/* One case of tests/data/ref_moe_quant.json (llama.cpp's log-probs on a file llama-quantize made from our
 * writer's F32 file; tests/ref/gptoss-quant-reference.sh): `f32_path` must hash as the case's F32 input.
 * `path` is either our writer's file with the same types per tensor (ours = 1: the case must record
 * it tensor-for-tensor identical to llama-quantize's) or llama-quantize's own file (ours = 0: its hash
 * is checked; NULL f32_path skips the F32 check). Fills *st with our run against llama.cpp's section
 * and prints "<name> (<ftype>, <types>) vs llama.cpp: ...". */
void spk_test_check_quant_case(const char *name, const char *f32_path, const char *path, int ours,
                               spk_test_cmp_stats *st);
/* The case `name` on llama-quantize's own file `file`, which gptoss-quant-reference.sh leaves in
 * $SPK_CACHE/ref-quant/ (default ~/.cache/sparkinfer): 1 with *st filled, or 0 after printing
 * "SKIP: <name> ... absent" when the file is not there. */
int spk_test_check_cached_quant_case(const char *name, const char *file, spk_test_cmp_stats *st);

/* Copy src to dir/bad.gguf with `n` bytes at (first occurrence of `find`) + `at` replaced; returns
 * the copy's path (a static buffer). */
const char *spk_test_patched(const char *src, const char *dir, const void *find, size_t flen, long at,
                             const void *repl, size_t n);
/* Open path and expect spk_llama_load to refuse it with status `want` and a message holding
 * needle1 (and needle2 unless NULL); prints "refused as expected: <message>". */
void spk_test_expect_load_error(const char *path, spk_status want, const char *needle1, const char *needle2);

/* A batch of n <= 64 tokens (tk[i] = (i * mul + add) % vocab at position i of sequence 0, logits
 * for all) and the one-rank logits of a model on it (malloc'd [n][n_vocab]). */
typedef struct spk_test_tokens {
    int32_t tk[64], ps[64], sq[64];
    uint8_t want[64];
    spk_batch b;
} spk_test_tokens;
void spk_test_tokens_init(spk_test_tokens *t, int n, int vocab, int mul, int add);
float *spk_test_one_rank_logits(const spk_hparams *hp, const spk_weights *w, const spk_batch *b);

/* One rank's forward of a fixed batch, run on its own thread (spk_test_fwd_run). */
typedef struct spk_test_fwd_job {
    spk_llama *m;
    const spk_batch *b;
    const float *in;
    float *out;
    spk_status st;
} spk_test_fwd_job;
void *spk_test_fwd_run(void *arg);

/* Per-rank checks of a layout's shard weights (called after spk_llama_shard, before create). */
typedef void (*spk_test_shard_check)(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh,
                                     const spk_weights *part, int ep);

/* The MoE part of a rank's shard weights (layer 0): with ep experts [e0, e1) whole, else every
 * expert's columns [f0, f1); the router whole (the full model's). */
void spk_test_check_moe_shard(const spk_hparams *hp, const spk_weights *full, const spk_shard *sh,
                              const spk_weights *part, int ep);

/* max |logit - ref| of batch b (b->n_tok <= 64 tokens, logits for all) on layout pp x tp; with ep the
 * TP group splits the experts (each rank every column of experts [e0, e1)) instead of every
 * expert's columns, attention heads split as for TP. Prints "<arch> pp P x tp|ep T: ...". */
double spk_test_run_layout(spk_gguf_file *f, const spk_hparams *hp, const spk_weights *full, const spk_batch *b,
                           const float *ref, int pp, int tp, int ep, spk_test_shard_check check);

#endif

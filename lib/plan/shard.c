/* Adapters between the plan and the llama forward pass's shard description. */
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "model/llama.h"
#include "plan/plan.h"

spk_status spk_shape_from_hparams(const spk_hparams *hp, const char *path, spk_shape *out)
{
    if (!hp || !out)
        return spk_err(SPK_ERR_INVALID_ARG, "shape_from_hparams: hparams or out is NULL");
    memset(out, 0, sizeof *out);
    const char *base = path ? strrchr(path, '/') : NULL;
    snprintf(out->name, sizeof out->name, "%.47s", base ? base + 1 : path ? path : hp->arch);
    out->n_layers = hp->n_layers;
    out->n_embd = hp->n_embd;
    out->n_heads = hp->n_heads;
    out->n_kv_heads = hp->n_kv_heads;
    out->head_dim = hp->head_dim;
    out->n_vocab = hp->n_vocab;
    /* a MoE model's hp->n_ff is the experts' width; its only always-active MLP is the shared one */
    out->n_experts = hp->n_expert;
    out->n_experts_used = hp->n_expert_used;
    out->n_ff_expert = hp->n_expert ? hp->n_ff : 0;
    out->n_ff = hp->n_expert ? hp->n_ff_shared : hp->n_ff;
    out->sliding_window = hp->n_swa_layers ? hp->swa_window : 0;
    out->n_sliding_layers = hp->n_swa_layers;
    out->tied_embeddings = hp->tied;
    out->quant_block = hp->quant_block;
    out->bytes_per_weight = hp->bytes_per_weight;
    out->bytes_per_expert = hp->bytes_per_expert;
    out->bytes_per_head = hp->bytes_per_head;
    out->bytes_per_kv = 2.0;
    return spk_shape_check(out);
}

spk_status spk_plan_shard(const spk_plan *p, int rank, spk_shard *out)
{
    spk_rank_slice r;
    if (!out)
        return spk_plan_rank(p, rank, NULL);
    spk_status st = spk_plan_rank(p, rank, &r);
    if (st)
        return st;
    const spk_plan_tpart *t = &p->part[r.tp_rank];
    memset(out, 0, sizeof *out);
    out->l0 = r.l0;
    out->l1 = r.l1;
    out->h0 = r.q0;
    out->h1 = r.q1;
    out->kv0 = r.kv0;
    out->kv1 = r.kv1;
    out->f0 = p->shape.n_experts > 0 ? r.fe0 : r.f0; /* MoE: every expert's columns (no dense MLP) */
    out->f1 = p->shape.n_experts > 0 ? r.fe1 : r.f1;
    if (p->ep > 1) { /* expert parallelism: whole experts [x0, x1), fe = every column */
        out->e0 = r.x0;
        out->e1 = r.x1;
    }
    out->v0 = t->v0; /* every rank gets its part's rows; only the last stage uses them */
    out->v1 = t->v1;
    out->first = r.embeds;
    out->last = r.has_head;
    return SPK_OK;
}

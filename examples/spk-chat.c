/*
 * spk-chat: an interactive multi-turn chat with the default (or a given) model, streaming the
 * answer as it is generated. Type a message and press Enter; an empty line or EOF quits;
 * "/reset" forgets the conversation.
 *
 *   spk-chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]
 *            [--ctx N] [--threads N] [--pp P] [--tp T]
 *
 * When the conversation and the answer's --max-tokens no longer fit the context (--ctx), the
 * oldest turns (never the system prompt) are dropped, with a note on stderr.
 */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "launch.h"

#define MAX_TURNS 256
#define P "spk-chat"

static char *roles[MAX_TURNS], *contents[MAX_TURNS];
static int n_turns;

/* Drop turn i (shifting the later ones down). */
static void drop_turn(int i)
{
    free(roles[i]);
    free(contents[i]);
    memmove(&roles[i], &roles[i + 1], sizeof(char *) * (size_t)(n_turns - i - 1));
    memmove(&contents[i], &contents[i + 1], sizeof(char *) * (size_t)(n_turns - i - 1));
    n_turns--;
}

/* The first turn that may be dropped: after the system prompt. */
static int first_droppable(void)
{
    return n_turns > 0 && !strcmp(roles[0], "system") ? 1 : 0;
}

static void add_turn(const char *role, const char *text, size_t len)
{
    if (n_turns == MAX_TURNS) /* keep the system prompt, drop the oldest exchange */
        for (int k = 0; k < 2; k++)
            drop_turn(first_droppable());
    roles[n_turns] = strdup(role);
    contents[n_turns] = strndup(text, len);
    n_turns++;
}

/* Render the conversation with the model's template into *text and its tokens into *ids
 * (both malloc'd); *n tokens. */
static int no_think; /* --no-think: Qwen3's enable_thinking=false */

static int render(spk_model *m, char **text, int32_t **ids, size_t *n)
{
    spk_chat_message msgs[MAX_TURNS];
    for (int i = 0; i < n_turns; i++)
        msgs[i] = (spk_chat_message){roles[i], contents[i]};
    spk_chat_options o;
    spk_chat_options_init(&o);
    o.enable_thinking = !no_think;
    size_t need = 0;
    spk_status st = spk_chat_apply_opts(m, msgs, (size_t)n_turns, &o, NULL, 0, &need);
    if (st != SPK_OK && st != SPK_ERR_TOO_LONG)
        return ex_fail("chat template", st);
    *text = malloc(need + 1);
    *ids = malloc((need + 16) * sizeof **ids);
    if (!*text || !*ids) {
        fprintf(stderr, P ": out of memory\n");
        return 1;
    }
    return ex_fail("chat template", spk_chat_apply_opts(m, msgs, (size_t)n_turns, &o, *text, need + 1, &need)) ||
           ex_fail("tokenize", spk_tokenize(m, *text, need, 1, 1, *ids, need + 16, n));
}

/* Render the conversation, dropping the oldest turns while it and the answer do not fit the
 * context, and answer the last user turn. Returns 1 on a fatal error. */
static int answer(spk_model *m, int n_ctx, int max_tokens, float temperature, uint64_t seed)
{
    size_t n = 0;
    int rc = 1, dropped = 0;
    char *text = NULL, *reply = NULL;
    int32_t *ids = NULL;
    size_t reply_len = 0;
    spk_detokenizer *dt = NULL;
    for (;;) {
        if (render(m, &text, &ids, &n))
            goto out;
        if (n + (size_t)max_tokens <= (size_t)n_ctx)
            break;
        free(text);
        free(ids);
        text = NULL;
        ids = NULL;
        int first = first_droppable();
        if (n_turns - first <= 1) { /* only the new message is left, and it alone is too long */
            fprintf(stderr, P ": your message is %zu tokens with the template; with --max-tokens %d it does not fit "
                            "the %d-token context (--ctx): not sent\n", n, max_tokens, n_ctx);
            drop_turn(n_turns - 1);
            rc = 0;
            goto out;
        }
        drop_turn(first); /* the oldest turn, and the answer to it with it */
        dropped++;
        if (n_turns - first > 1 && !strcmp(roles[first], "assistant")) {
            drop_turn(first);
            dropped++;
        }
    }
    if (dropped)
        fprintf(stderr, "[" P ": the conversation outgrew the %d-token context: dropped the %d oldest turn%s]\n",
                n_ctx, dropped, dropped > 1 ? "s" : "");
    if (ex_fail("detokenizer", spk_detokenizer_new(m, 1, &dt)))
        goto out;
    spk_request r;
    spk_request_init(&r);
    r.prompt = ids;
    r.n_prompt = n;
    r.max_tokens = max_tokens;
    r.temperature = temperature;
    r.seed = seed;
    uint64_t id;
    if (ex_fail("submit", spk_submit(m, &r, 1, &id)))
        goto out;
    for (int done = 0; !done;) {
        spk_event ev[64];
        size_t ne;
        if (ex_fail("poll", spk_poll(m, ev, 64, &ne, -1)))
            goto out;
        for (size_t i = 0; i < ne; i++) {
            char piece[1024];
            size_t pn = 0;
            if (ev[i].token >= 0 && spk_detokenizer_push(dt, ev[i].token, piece, sizeof piece, &pn) == SPK_OK && pn) {
                fwrite(piece, 1, pn, stdout);
                fflush(stdout);
                char *grown = realloc(reply, reply_len + pn + 1);
                if (grown) {
                    reply = grown;
                    memcpy(reply + reply_len, piece, pn);
                    reply_len += pn;
                }
            }
            if (ev[i].finish == SPK_FINISH_ERROR) {
                fprintf(stderr, "\n" P ": %s\n", spk_status_str(ev[i].status));
                goto out;
            }
            done |= ev[i].finish != SPK_FINISH_NONE;
        }
    }
    printf("\n");
    add_turn("assistant", reply ? reply : "", reply_len);
    rc = 0;
out:
    spk_detokenizer_free(dt);
    free(reply);
    free(text);
    free(ids);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: spk-chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T]\n"
               "                [--seed S] [--ctx N] [--threads N] [--pp P] [--tp T] [--backend cpu|cuda|auto]\n"
               "                [--device N] [--no-think]\n"
               "--no-think: Qwen3 answers without reasoning (enable_thinking=false: an empty <think> block\n"
               "opens each reply); other templates ignore it.\n"
               "Type a message and press Enter; an empty line or EOF quits; /reset forgets the conversation.\n"
               "When the conversation outgrows the context (--ctx, default 4096 or the model's if smaller),\n"
               "the oldest turns are dropped.\n");
}

int main(int argc, char **argv)
{
    const char *model_path = ex_default_model(), *system = NULL;
    int max_tokens = 256, threads = 0, pp = 1, tp = 1, n_ctx = 0, backend = SPK_BACKEND_CPU, device = 0;
    float temperature = 0.7f;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--no-think")) { no_think = 1; continue; }
        else if (!v) { fprintf(stderr, P ": %s needs a value\n", a); usage(stderr); return 2; }
        else if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--max-tokens")) bad = ex_parse_int(P, a, v, 1, 1 << 24, &max_tokens);
        else if (!strcmp(a, "--temperature")) bad = ex_parse_float(P, a, v, 0, 100, &temperature);
        else if (!strcmp(a, "--seed")) bad = ex_parse_u64(P, a, v, &seed);
        else if (!strcmp(a, "--ctx")) bad = ex_parse_int(P, a, v, 16, 1 << 24, &n_ctx);
        else if (!strcmp(a, "--threads")) bad = ex_parse_int(P, a, v, 0, 4096, &threads);
        else if (!strcmp(a, "--backend")) bad = ex_parse_backend(P, a, v, &backend);
        else if (!strcmp(a, "--device")) bad = ex_parse_int(P, a, v, 0, 1023, &device);
        else if (!strcmp(a, "--pp")) bad = ex_parse_int(P, a, v, 1, 64, &pp);
        else if (!strcmp(a, "--tp")) bad = ex_parse_int(P, a, v, 1, 64, &tp);
        else { fprintf(stderr, P ": unknown option %s\n", a); usage(stderr); return 2; }
        if (bad)
            return 2;
        i++;
    }
    if (pp * tp > 64) {
        fprintf(stderr, P ": --pp x --tp is %d; at most 64 ranks\n", pp * tp);
        return 2;
    }
    if (n_ctx && max_tokens >= n_ctx) {
        fprintf(stderr, P ": --max-tokens %d leaves no room for a message in --ctx %d\n", max_tokens, n_ctx);
        return 2;
    }
    spk_cluster *cl = ex_open_cluster(pp * tp, threads, NULL, "tcp");
    if (!cl)
        return 1;
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.max_seqs = 1;
    mc.backend = backend;
    mc.device = device;
    mc.pp = pp;
    mc.tp = tp;
    mc.n_ctx = n_ctx;
    spk_model *m = NULL;
    int rc = 0;
    spk_model_info info = {.struct_size = sizeof info};
    if (ex_fail(model_path, spk_model_load(cl, &mc, &m)) || ex_fail("model info", spk_model_get_info(m, &info))) {
        rc = 1;
    } else if (max_tokens >= info.n_ctx) {
        fprintf(stderr, P ": --max-tokens %d leaves no room for a message in the %d-token context\n", max_tokens,
                info.n_ctx);
        rc = 2;
    } else {
        if (system)
            add_turn("system", system, strlen(system));
        char line[8192];
        for (;;) {
            printf("> ");
            fflush(stdout);
            if (!fgets(line, sizeof line, stdin))
                break;
            size_t len = strcspn(line, "\r\n");
            if (len == 0)
                break;
            if (!strncmp(line, "/reset", 6)) {
                for (int i = system ? 1 : 0; i < n_turns; i++) {
                    free(roles[i]);
                    free(contents[i]);
                }
                n_turns = system ? 1 : 0;
                continue;
            }
            add_turn("user", line, len);
            if (answer(m, info.n_ctx, max_tokens, temperature, seed++) != 0) {
                rc = 1;
                break;
            }
        }
    }
    for (int i = 0; i < n_turns; i++) {
        free(roles[i]);
        free(contents[i]);
    }
    spk_model_free(m);
    spk_cluster_close(cl);
    ex_reap_workers(5000);
    return rc;
}

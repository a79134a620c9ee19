/*
 * spk-chat: an interactive multi-turn chat with the default (or a given) model, streaming the
 * answer as it is generated. Type a message and press Enter; an empty line or EOF quits;
 * "/reset" forgets the conversation.
 *
 *   spk-chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]
 *            [--threads N] [--pp P] [--tp T]
 */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "launch.h"

#define MAX_TURNS 256

static char *roles[MAX_TURNS], *contents[MAX_TURNS];
static int n_turns;

static void add_turn(const char *role, const char *text, size_t len)
{
    if (n_turns == MAX_TURNS) { /* keep the system prompt, drop the oldest exchange */
        int keep = roles[0] && !strcmp(roles[0], "system") ? 1 : 0;
        for (int k = 0; k < 2; k++) {
            free(roles[keep]);
            free(contents[keep]);
            memmove(&roles[keep], &roles[keep + 1], sizeof(char *) * (size_t)(n_turns - keep - 1));
            memmove(&contents[keep], &contents[keep + 1], sizeof(char *) * (size_t)(n_turns - keep - 1));
            n_turns--;
        }
    }
    roles[n_turns] = strdup(role);
    contents[n_turns] = strndup(text, len);
    n_turns++;
}

/* Render the conversation with the model's template and answer the last user turn. */
static int answer(spk_model *m, int max_tokens, float temperature, uint64_t seed)
{
    spk_chat_message msgs[MAX_TURNS];
    for (int i = 0; i < n_turns; i++)
        msgs[i] = (spk_chat_message){roles[i], contents[i]};
    size_t need = 0;
    spk_status st = spk_chat_apply(m, msgs, (size_t)n_turns, 1, NULL, 0, &need);
    if (st != SPK_OK && st != SPK_ERR_TOO_LONG)
        return ex_fail("chat template", st);
    char *text = malloc(need + 1);
    int32_t *ids = malloc((need + 16) * sizeof *ids);
    size_t n = 0;
    int rc = 1;
    char *reply = NULL;
    size_t reply_len = 0;
    spk_detokenizer *dt = NULL;
    if (!text || !ids || ex_fail("chat template", spk_chat_apply(m, msgs, (size_t)n_turns, 1, text, need + 1, &need)) ||
        ex_fail("tokenize", spk_tokenize(m, text, need, 1, 1, ids, need + 16, &n)) ||
        ex_fail("detokenizer", spk_detokenizer_new(m, 1, &dt)))
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
    reply = malloc(1);
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
                fprintf(stderr, "\nspk-chat: %s\n", spk_status_str(ev[i].status));
                goto out;
            }
            done |= ev[i].finish != SPK_FINISH_NONE;
        }
    }
    printf("\n");
    add_turn("assistant", reply, reply_len);
    rc = 0;
out:
    spk_detokenizer_free(dt);
    free(reply);
    free(text);
    free(ids);
    return rc;
}

int main(int argc, char **argv)
{
    const char *model_path = ex_default_model(), *system = NULL;
    int max_tokens = 256, threads = 0, pp = 1, tp = 1;
    float temperature = 0.7f;
    uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(a, "--temperature")) temperature = strtof(v, NULL);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--pp")) pp = atoi(v);
        else if (!strcmp(a, "--tp")) tp = atoi(v);
        else {
            fprintf(stderr, "usage: spk-chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T]\n"
                            "                [--seed S] [--threads N] [--pp P] [--tp T]\n");
            return 2;
        }
    }
    if (pp < 1 || tp < 1 || pp * tp > 64 || max_tokens < 1)
        return 2;
    spk_cluster *cl = ex_open_cluster(pp * tp, threads, NULL, "tcp");
    if (!cl)
        return 1;
    spk_model_config mc;
    spk_model_config_init(&mc);
    mc.path = model_path;
    mc.max_seqs = 1;
    mc.pp = pp;
    mc.tp = tp;
    spk_model *m = NULL;
    int rc = 0;
    if (ex_fail(model_path, spk_model_load(cl, &mc, &m))) {
        rc = 1;
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
            if (answer(m, max_tokens, temperature, seed++) != 0) {
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

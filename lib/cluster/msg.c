/*
 * What runs over the control plane: driver commands and worker replies, the worker's serve loop
 * with its handler table, control-plane barrier and all-gather, and the driver's goodbye.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "cluster/cluster_internal.h"
#include "common/error.h"

struct spk_cluster_reply {
    uint8_t *data;
    size_t len;
};

#define CMD_DATA_MAX (SPK_PROTO_MAX_PAYLOAD - 8u)
#define REPLY_DATA_MAX (SPK_PROTO_MAX_PAYLOAD - 10u - SPK_PROTO_MAX_MSG)
#define AG_DATA_MAX (SPK_PROTO_MAX_PAYLOAD - 12u)

static int64_t deadline_from(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : spk_net_now_ms() + timeout_ms;
}

void spk_cluster_frame_free(spk_frame *f)
{
    if (f) {
        free(f->payload);
        free(f);
    }
}

void spk_cluster_inbox_free(spk_cluster *c)
{
    spk_frame *f = c->inbox_head;
    while (f) {
        spk_frame *n = f->next;
        spk_cluster_frame_free(f);
        f = n;
    }
    c->inbox_head = c->inbox_tail = NULL;
    c->inbox.frames = c->inbox.bytes = 0; /* peers[] may be gone already (close) */
}

void spk_cluster_inbox_stats_get(spk_cluster *c, spk_cluster_inbox_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->inbox;
    pthread_mutex_unlock(&c->mu);
}

/* Wait on c->cv until deadline_ms (-1: no deadline). Caller holds c->mu. 0 on timeout. */
static int cv_wait(spk_cluster *c, int64_t deadline_ms)
{
    if (deadline_ms < 0) {
        pthread_cond_wait(&c->cv, &c->mu);
        return 1;
    }
    int64_t now = spk_net_now_ms();
    if (now >= deadline_ms)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t left = deadline_ms - now;
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    return 1;
}

static spk_frame *unlink_match(spk_cluster *c, int from, uint16_t type, uint32_t req_id)
{
    spk_frame *prev = NULL;
    for (spk_frame *f = c->inbox_head; f; prev = f, f = f->next) {
        if (f->from != from || f->m.h.type != type)
            continue;
        if (type == SPK_MSG_REPLY && f->m.u.reply.req_id != req_id)
            continue;
        if (prev)
            prev->next = f->next;
        else
            c->inbox_head = f->next;
        if (c->inbox_tail == f)
            c->inbox_tail = prev;
        f->next = NULL;
        c->peers[f->from].inbox_frames--;
        c->peers[f->from].inbox_bytes -= f->m.h.length;
        c->inbox.frames--;
        c->inbox.bytes -= f->m.h.length;
        return f;
    }
    return NULL;
}

spk_status spk_cluster_take(spk_cluster *c, int from, uint16_t type, uint32_t req_id,
                            int64_t deadline_ms, const char *what, spk_frame **out)
{
    spk_status st = SPK_OK;
    *out = NULL;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        spk_frame *f = unlink_match(c, from, type, req_id);
        if (f) {
            *out = f;
            break;
        }
        if (c->fail != SPK_OK) {
            st = spk_err(c->fail, "%s", c->fail_msg);
            break;
        }
        if (!c->peers[from].alive) {
            st = c->rank != 0 && c->shutdown_rx
                     ? spk_err(SPK_ERR_PEER_LOST, "%s: the driver (%s) closed the cluster", what,
                               c->peers[from].addr)
                     : spk_err(SPK_ERR_PEER_LOST, "%s: rank %d (%s) is gone", what, from,
                               c->peers[from].addr);
            break;
        }
        if (!cv_wait(c, deadline_ms)) {
            st = spk_err(SPK_ERR_TIMEOUT, "%s: no answer from rank %d (%s) in time", what, from,
                         c->peers[from].addr);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Commands                                                                                 */
/* ---------------------------------------------------------------------------------------- */

spk_status spk_cluster_command_send(spk_cluster *c, int rank, uint32_t cmd_id, const void *data,
                                    size_t len, int want_reply, uint32_t *req_id)
{
    if (req_id)
        *req_id = 0;
    if (!c || (len && !data) || (want_reply && !req_id))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_command_send: NULL argument");
    if (c->rank != 0)
        return spk_err(SPK_ERR_STATE, "rank %d: only the driver (rank 0) sends commands", c->rank);
    if (rank < 1 || rank >= c->world)
        return spk_err(SPK_ERR_INVALID_ARG, "command %u: rank %d out of range 1..%d", cmd_id, rank,
                       c->world - 1);
    if (len > CMD_DATA_MAX)
        return spk_err(SPK_ERR_TOO_LONG, "command %u: %zu bytes exceed the control-plane limit %u",
                       cmd_id, len, CMD_DATA_MAX);
    pthread_mutex_lock(&c->mu);
    uint32_t id = ++c->next_req_id;
    if (id == 0)
        id = ++c->next_req_id;
    pthread_mutex_unlock(&c->mu);
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_COMMAND;
    m.h.flags = want_reply ? 0 : SPK_PROTO_F_NOREPLY;
    m.u.command.cmd_id = cmd_id;
    m.u.command.req_id = id;
    m.u.command.data = data;
    m.u.command.len = (uint32_t)len;
    spk_status st = spk_cluster_send(c, &c->peers[rank], &m);
    if (st == SPK_OK && req_id)
        *req_id = id;
    return st;
}

spk_status spk_cluster_command_wait(spk_cluster *c, int rank, uint32_t req_id, int timeout_ms,
                                    void **reply, size_t *reply_len)
{
    if (reply)
        *reply = NULL;
    if (reply_len)
        *reply_len = 0;
    if (!c || rank < 1 || rank >= c->world || c->rank != 0)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_command_wait: bad cluster or rank %d",
                       rank);
    char what[64];
    snprintf(what, sizeof what, "reply to request %u", req_id);
    spk_frame *f;
    spk_status st = spk_cluster_take(c, rank, SPK_MSG_REPLY, req_id, deadline_from(timeout_ms),
                                     what, &f);
    if (st != SPK_OK)
        return st;
    st = (spk_status)f->m.u.reply.status;
    if (st != SPK_OK) {
        char text[SPK_PROTO_MAX_MSG + 1];
        spk_proto_sanitize(text, sizeof text, f->m.u.reply.msg, f->m.u.reply.msg_len);
        spk_err(st, "rank %d (%s): %s", rank, c->peers[rank].addr, text);
    } else if (f->m.u.reply.len && reply) {
        void *d = malloc(f->m.u.reply.len);
        if (!d) {
            st = spk_err(SPK_ERR_NOMEM, "reply of %u bytes from rank %d", f->m.u.reply.len, rank);
        } else {
            memcpy(d, f->m.u.reply.data, f->m.u.reply.len);
            *reply = d;
            if (reply_len)
                *reply_len = f->m.u.reply.len;
        }
    } else if (reply_len) {
        *reply_len = f->m.u.reply.len;
    }
    spk_cluster_frame_free(f);
    return st;
}

spk_status spk_cluster_call(spk_cluster *c, int rank, uint32_t cmd_id, const void *data,
                            size_t len, void **reply, size_t *reply_len, int timeout_ms)
{
    uint32_t id;
    spk_status st = spk_cluster_command_send(c, rank, cmd_id, data, len, 1, &id);
    if (st != SPK_OK)
        return st;
    return spk_cluster_command_wait(c, rank, id, timeout_ms, reply, reply_len);
}

spk_status spk_cluster_broadcast(spk_cluster *c, uint32_t cmd_id, const void *data, size_t len,
                                 int timeout_ms)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_broadcast: cluster is NULL");
    uint32_t ids[SPK_PROTO_MAX_RANKS] = {0};
    int64_t dl = deadline_from(timeout_ms);
    for (int r = 1; r < c->world; r++) {
        spk_status st = spk_cluster_command_send(c, r, cmd_id, data, len, 1, &ids[r]);
        if (st != SPK_OK)
            return st;
    }
    spk_status first = SPK_OK;
    char msg[SPK_CLUSTER_FAIL_CAP] = "";
    for (int r = 1; r < c->world; r++) {
        int left = dl < 0 ? -1 : (int)(dl - spk_net_now_ms() > 0 ? dl - spk_net_now_ms() : 0);
        spk_status st = spk_cluster_command_wait(c, r, ids[r], left, NULL, NULL);
        if (st != SPK_OK && first == SPK_OK) {
            first = st;
            snprintf(msg, sizeof msg, "%s", spk_err_msg());
        }
        if (st == SPK_ERR_PEER_LOST || st == SPK_ERR_TIMEOUT)
            break;
    }
    return first == SPK_OK ? SPK_OK : spk_err(first, "%s", msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Worker side                                                                              */
/* ---------------------------------------------------------------------------------------- */

spk_status spk_cluster_set_handler(spk_cluster *c, uint32_t cmd_id, spk_cluster_handler fn,
                                   void *user)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_set_handler: cluster is NULL");
    if (cmd_id < SPK_CLUSTER_CMD_USER)
        return spk_err(SPK_ERR_INVALID_ARG, "command id %u is reserved (user ids start at %u)",
                       cmd_id, SPK_CLUSTER_CMD_USER);
    spk_status st = SPK_OK;
    pthread_mutex_lock(&c->mu);
    size_t i = 0;
    while (i < c->n_handlers && c->handlers[i].cmd_id != cmd_id)
        i++;
    if (!fn) {
        if (i < c->n_handlers)
            c->handlers[i] = c->handlers[--c->n_handlers];
    } else if (i < c->n_handlers) {
        c->handlers[i].fn = fn;
        c->handlers[i].user = user;
    } else {
        if (c->n_handlers == c->cap_handlers) {
            size_t cap = c->cap_handlers ? c->cap_handlers * 2 : 16;
            spk_handler_entry *nh = realloc(c->handlers, cap * sizeof *nh);
            if (!nh) {
                pthread_mutex_unlock(&c->mu);
                return spk_err(SPK_ERR_NOMEM, "spk_cluster_set_handler: out of memory");
            }
            c->handlers = nh;
            c->cap_handlers = cap;
        }
        c->handlers[c->n_handlers++] = (spk_handler_entry){cmd_id, fn, user};
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

spk_status spk_cluster_reply_set(spk_cluster_reply *r, const void *data, size_t len)
{
    if (!r || (len && !data))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_reply_set: NULL argument");
    if (len > REPLY_DATA_MAX)
        return spk_err(SPK_ERR_TOO_LONG, "reply of %zu bytes exceeds the control-plane limit %u",
                       len, REPLY_DATA_MAX);
    uint8_t *d = NULL;
    if (len) {
        d = malloc(len);
        if (!d)
            return spk_err(SPK_ERR_NOMEM, "reply of %zu bytes", len);
        memcpy(d, data, len);
    }
    free(r->data);
    r->data = d;
    r->len = len;
    return SPK_OK;
}

static void run_command(spk_cluster *c, spk_frame *f)
{
    const uint32_t cmd = f->m.u.command.cmd_id;
    spk_cluster_reply reply = {0};
    spk_status st;
    spk_err_clear();
    if (cmd == SPK_CLUSTER_CMD_PING) {
        st = spk_cluster_reply_set(&reply, f->m.u.command.data, f->m.u.command.len);
    } else {
        spk_cluster_handler fn = NULL;
        void *user = NULL;
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < c->n_handlers; i++)
            if (c->handlers[i].cmd_id == cmd) {
                fn = c->handlers[i].fn;
                user = c->handlers[i].user;
            }
        pthread_mutex_unlock(&c->mu);
        st = fn ? fn(c, cmd, f->m.u.command.data, f->m.u.command.len, &reply, user)
                : spk_err(SPK_ERR_UNSUPPORTED, "no handler for command %u", cmd);
    }
    if (!(f->m.h.flags & SPK_PROTO_F_NOREPLY)) {
        spk_proto_msg m = {0};
        const char *text = st == SPK_OK ? "" : spk_err_msg();
        size_t tl = strlen(text);
        m.h.type = SPK_MSG_REPLY;
        m.u.reply.req_id = f->m.u.command.req_id;
        m.u.reply.status = (uint32_t)st;
        m.u.reply.msg = text;
        m.u.reply.msg_len = (uint32_t)(tl > SPK_PROTO_MAX_MSG ? SPK_PROTO_MAX_MSG : tl);
        m.u.reply.data = st == SPK_OK ? reply.data : NULL;
        m.u.reply.len = st == SPK_OK ? (uint32_t)reply.len : 0;
        spk_cluster_send(c, &c->peers[0], &m); /* a failure shows in the serve loop */
    } else if (st != SPK_OK) {
        spk_log(SPK_LOG_WARN, "cluster: rank %d: command %u failed: %s", c->rank, cmd,
                spk_err_msg());
    }
    free(reply.data);
}

spk_status spk_cluster_serve_loop(spk_cluster *c)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_serve: cluster is NULL");
    if (c->rank == 0)
        return spk_err(SPK_ERR_STATE, "spk_cluster_serve: rank 0 is the driver and does not serve");
    for (;;) {
        pthread_mutex_lock(&c->mu);
        spk_frame *f = NULL;
        spk_status st = SPK_OK;
        int done = 0;
        for (;;) {
            if (c->fail != SPK_OK) {
                st = spk_err(c->fail, "%s", c->fail_msg);
                done = 1;
                break;
            }
            f = unlink_match(c, 0, SPK_MSG_COMMAND, 0);
            if (f)
                break;
            if (c->shutdown_rx) {
                done = 1;
                break;
            }
            cv_wait(c, -1);
        }
        pthread_mutex_unlock(&c->mu);
        if (done)
            return st;
        run_command(c, f);
        spk_cluster_frame_free(f);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Collectives over the control plane (star through the driver)                            */
/* ---------------------------------------------------------------------------------------- */

static int64_t coll_deadline(spk_cluster *c, int timeout_ms)
{
    return spk_net_now_ms() + (timeout_ms < 0 ? c->cfg.connect_timeout_ms : timeout_ms);
}

/* A collective went wrong: the ranks are out of step for good, so fail the cluster. */
static spk_status coll_fail(spk_cluster *c, spk_status st, const char *what)
{
    char msg[SPK_CLUSTER_FAIL_CAP];
    snprintf(msg, sizeof msg, "%s: %s", what, spk_err_msg());
    if (st != SPK_ERR_PEER_LOST)
        spk_cluster_fail(c, st, -1, "%s", msg);
    return spk_err(st, "%s", msg);
}

spk_status spk_cluster_barrier(spk_cluster *c, int timeout_ms)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_barrier: cluster is NULL");
    if (c->world == 1)
        return SPK_OK;
    int64_t dl = coll_deadline(c, timeout_ms);
    pthread_mutex_lock(&c->mu);
    uint32_t round = ++c->barrier_round;
    pthread_mutex_unlock(&c->mu);
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_BARRIER;
    m.u.barrier.round = round;
    spk_frame *f;
    spk_status st;
    if (c->rank != 0) {
        st = spk_cluster_send(c, &c->peers[0], &m);
        if (st == SPK_OK)
            st = spk_cluster_take(c, 0, SPK_MSG_BARRIER, 0, dl, "barrier", &f);
        if (st != SPK_OK)
            return coll_fail(c, st, "barrier");
        uint32_t got = f->m.u.barrier.round;
        spk_cluster_frame_free(f);
        if (got != round) {
            spk_err(SPK_ERR_STATE, "driver is at barrier %u, rank %d at %u", got, c->rank, round);
            return coll_fail(c, SPK_ERR_STATE, "barrier");
        }
        return SPK_OK;
    }
    for (int r = 1; r < c->world; r++) {
        st = spk_cluster_take(c, r, SPK_MSG_BARRIER, 0, dl, "barrier", &f);
        if (st != SPK_OK)
            return coll_fail(c, st, "barrier");
        uint32_t got = f->m.u.barrier.round;
        spk_cluster_frame_free(f);
        if (got != round) {
            spk_err(SPK_ERR_STATE, "rank %d is at barrier %u, the driver at %u", r, got, round);
            return coll_fail(c, SPK_ERR_STATE, "barrier");
        }
    }
    for (int r = 1; r < c->world; r++) {
        st = spk_cluster_send(c, &c->peers[r], &m);
        if (st != SPK_OK)
            return coll_fail(c, st, "barrier");
    }
    return SPK_OK;
}

spk_status spk_cluster_allgather(spk_cluster *c, const void *mine, void *all, size_t n,
                                 int timeout_ms)
{
    if (!c || !all || (n && !mine))
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_allgather: NULL argument");
    if (n > AG_DATA_MAX / (size_t)c->world)
        return spk_err(SPK_ERR_INVALID_ARG,
                       "allgather: %zu bytes per rank x %d ranks exceed the control-plane limit %u",
                       n, c->world, AG_DATA_MAX);
    uint8_t *out = all;
    if (c->world == 1) {
        if (n && out != (const uint8_t *)mine)
            memmove(out, mine, n);
        return SPK_OK;
    }
    int64_t dl = coll_deadline(c, timeout_ms);
    pthread_mutex_lock(&c->mu);
    uint32_t round = ++c->ag_round;
    pthread_mutex_unlock(&c->mu);
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_ALLGATHER;
    m.u.allgather.round = round;
    m.u.allgather.item_len = (uint32_t)n;
    spk_frame *f;
    spk_status st;
    if (c->rank != 0) {
        m.u.allgather.n_items = 1;
        m.u.allgather.data = mine;
        st = spk_cluster_send(c, &c->peers[0], &m);
        if (st == SPK_OK)
            st = spk_cluster_take(c, 0, SPK_MSG_ALLGATHER, 0, dl, "allgather", &f);
        if (st != SPK_OK)
            return coll_fail(c, st, "allgather");
        const spk_proto_msg *g = &f->m;
        if (g->u.allgather.round != round || g->u.allgather.item_len != n ||
            g->u.allgather.n_items != (uint32_t)c->world) {
            spk_err(SPK_ERR_INVALID_ARG, "driver sent round %u with %u x %u bytes; rank %d is at "
                                         "round %u with %d x %zu bytes", g->u.allgather.round,
                    g->u.allgather.n_items, g->u.allgather.item_len, c->rank, round, c->world, n);
            spk_cluster_frame_free(f);
            return coll_fail(c, SPK_ERR_INVALID_ARG, "allgather");
        }
        if (n)
            memcpy(out, g->u.allgather.data, n * (size_t)c->world);
        spk_cluster_frame_free(f);
        return SPK_OK;
    }
    if (n && out != (const uint8_t *)mine)
        memmove(out, mine, n);
    for (int r = 1; r < c->world; r++) {
        st = spk_cluster_take(c, r, SPK_MSG_ALLGATHER, 0, dl, "allgather", &f);
        if (st != SPK_OK)
            return coll_fail(c, st, "allgather");
        const spk_proto_msg *g = &f->m;
        if (g->u.allgather.round != round || g->u.allgather.item_len != n ||
            g->u.allgather.n_items != 1) {
            spk_err(SPK_ERR_INVALID_ARG, "rank %d sent round %u with %u bytes; the driver is at "
                                         "round %u with %zu bytes per rank", r,
                    g->u.allgather.round, g->u.allgather.item_len, round, n);
            spk_cluster_frame_free(f);
            return coll_fail(c, SPK_ERR_INVALID_ARG, "allgather");
        }
        if (n)
            memcpy(out + (size_t)r * n, g->u.allgather.data, n);
        spk_cluster_frame_free(f);
    }
    m.u.allgather.n_items = (uint32_t)c->world;
    m.u.allgather.data = out;
    for (int r = 1; r < c->world; r++) {
        st = spk_cluster_send(c, &c->peers[r], &m);
        if (st != SPK_OK)
            return coll_fail(c, st, "allgather");
    }
    return SPK_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Health and goodbye                                                                       */
/* ---------------------------------------------------------------------------------------- */

spk_status spk_cluster_health(spk_cluster *c)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_health: cluster is NULL");
    pthread_mutex_lock(&c->mu);
    spk_status st = c->fail == SPK_OK ? SPK_OK : spk_err(c->fail, "%s", c->fail_msg);
    pthread_mutex_unlock(&c->mu);
    return st;
}

spk_status spk_cluster_wait_failure(spk_cluster *c, int timeout_ms)
{
    if (!c)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_cluster_wait_failure: cluster is NULL");
    int64_t dl = deadline_from(timeout_ms);
    spk_status st;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->fail != SPK_OK) {
            st = spk_err(c->fail, "%s", c->fail_msg);
            break;
        }
        if (c->world == 1 && dl < 0) {
            st = spk_err(SPK_ERR_STATE, "a single-rank cluster cannot lose a peer");
            break;
        }
        if (!cv_wait(c, dl)) {
            st = spk_err(SPK_ERR_TIMEOUT, "no cluster failure within %d ms", timeout_ms);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}

void spk_cluster_say_goodbye(spk_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    c->closing = 1;
    int failed = c->fail != SPK_OK;
    pthread_mutex_unlock(&c->mu);
    if (c->rank != 0) {
        /* A worker leaving on its own tells the driver; after SHUTDOWN it just goes. */
        pthread_mutex_lock(&c->mu);
        int tell = !failed && !c->shutdown_rx && c->peers[0].alive;
        pthread_mutex_unlock(&c->mu);
        if (tell) {
            spk_proto_msg m = {0};
            m.h.type = SPK_MSG_SHUTDOWN;
            spk_cluster_send(c, &c->peers[0], &m);
        }
        return;
    }
    if (failed)
        return;
    for (int r = 1; r < c->world; r++) {
        spk_proto_msg m = {0};
        m.h.type = SPK_MSG_SHUTDOWN;
        if (spk_cluster_send(c, &c->peers[r], &m) == SPK_OK)
            shutdown(c->peers[r].fd, SHUT_WR);
    }
    /* Wait (bounded) until every worker hung up, so none sees a reset before the SHUTDOWN. */
    int64_t dl = spk_net_now_ms() + c->cfg.peer_timeout_ms;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int open = 0;
        for (int r = 1; r < c->world; r++)
            if (c->peers[r].alive && !c->peers[r].eof)
                open++;
        if (!open || c->fail != SPK_OK || !cv_wait(c, dl))
            break;
    }
    pthread_mutex_unlock(&c->mu);
}

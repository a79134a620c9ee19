/* Control-plane wire protocol: byte layout, round trips, and rejection of every malformed field. */
#include <stdlib.h>
#include <string.h>

#include "cluster/proto.h"
#include "testutil.h"

static size_t enc(const spk_proto_msg *m, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    ck_assert_int_eq(spk_proto_encode(m, buf, cap, &n), SPK_OK);
    return n;
}

static spk_status dec(const uint8_t *buf, size_t n, spk_proto_msg *m, size_t *used)
{
    return spk_proto_decode(buf, n, m, used);
}

START_TEST(header_is_explicit_little_endian)
{
    uint8_t buf[64];
    const uint8_t data[3] = {0xAA, 0xBB, 0xCC};
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_COMMAND;
    m.h.flags = SPK_PROTO_F_NOREPLY;
    m.h.seq = 0x0102030405060708ull;
    m.u.command.cmd_id = 0x11223344;
    m.u.command.req_id = 0x55667788;
    m.u.command.data = data;
    m.u.command.len = 3;
    size_t n = enc(&m, buf, sizeof buf);
    ck_assert_uint_eq(n, SPK_PROTO_HEADER_SIZE + 8 + 3);
    const uint8_t want[] = {'S', 'P', 'K', 'C', SPK_PROTO_VERSION, 0, SPK_MSG_COMMAND, 0, 1, 0, 0, 0, 11, 0, 0, 0,
                            8, 7, 6, 5, 4, 3, 2, 1, 0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x55,
                            0xAA, 0xBB, 0xCC};
    ck_assert_uint_eq(sizeof want, n);
    ck_assert_mem_eq(buf, want, n);
}
END_TEST

static void roundtrip(const spk_proto_msg *m)
{
    uint8_t buf[4096];
    size_t n = enc(m, buf, sizeof buf), used = 0;
    spk_proto_msg d;
    ck_assert_int_eq(dec(buf, n, &d, &used), SPK_OK);
    ck_assert_uint_eq(used, n);
    ck_assert_uint_eq(d.h.type, m->h.type);
    ck_assert_uint_eq(d.h.seq, m->h.seq);
    ck_assert_uint_eq(d.h.flags, m->h.flags);
    ck_assert_uint_eq(d.h.version, SPK_PROTO_VERSION);
    /* Re-encoding the decoded message gives the same bytes. */
    uint8_t again[4096];
    size_t n2 = enc(&d, again, sizeof again);
    ck_assert_uint_eq(n2, n);
    ck_assert_mem_eq(again, buf, n);
}

START_TEST(every_type_round_trips)
{
    const uint8_t blob[5] = {1, 2, 3, 4, 5};
    spk_proto_msg m;
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_CHALLENGE;
    m.h.flags = SPK_PROTO_F_KEYED;
    m.h.seq = 1;
    memset(m.u.challenge.nonce, 0x5A, SPK_PROTO_NONCE_BYTES);
    memset(m.u.challenge.session, 0xA5, SPK_PROTO_NONCE_BYTES);
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_HELLO;
    m.h.seq = 1;
    m.u.hello.rank = 3;
    m.u.hello.world_size = 4;
    memset(m.u.hello.mac, 7, SPK_PROTO_MAC_BYTES);
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_RESPONSE;
    memset(m.u.response.mac, 9, SPK_PROTO_MAC_BYTES);
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_VERSION;
    m.u.version.lib_version = 100;
    m.u.version.proto_version = 1;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_HEARTBEAT;
    m.u.heartbeat.time_ns = 123456789012345ull;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_SHUTDOWN;
    m.h.seq = 99;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_ERROR;
    m.u.error.status = SPK_ERR_PEER_LOST;
    m.u.error.rank = 2;
    m.u.error.msg = "rank 2 lost";
    m.u.error.msg_len = 11;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_ALLGATHER;
    m.u.allgather.round = 5;
    m.u.allgather.item_len = 1;
    m.u.allgather.n_items = 5;
    m.u.allgather.data = blob;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_BARRIER;
    m.u.barrier.round = 77;
    roundtrip(&m);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_REPLY;
    m.u.reply.req_id = 8;
    m.u.reply.status = SPK_ERR_UNSUPPORTED;
    m.u.reply.msg = "no";
    m.u.reply.msg_len = 2;
    m.u.reply.data = blob;
    m.u.reply.len = 5;
    roundtrip(&m);
}
END_TEST

/* Build a raw header with the given fields. */
static void raw_header(uint8_t *b, uint32_t magic, uint16_t ver, uint16_t type, uint32_t flags,
                       uint32_t len, uint64_t seq)
{
    spk_proto_header h = {magic, ver, type, flags, len, seq};
    spk_proto_encode_header(b, &h);
}

START_TEST(header_fields_are_bounds_checked)
{
    uint8_t b[SPK_PROTO_HEADER_SIZE + 64] = {0};
    spk_proto_header h;
    raw_header(b, 0x12345678, 1, SPK_MSG_HEARTBEAT, 0, 8, 1);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    raw_header(b, SPK_PROTO_MAGIC, 0, SPK_MSG_HEARTBEAT, 0, 8, 1);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    const uint16_t bad_types[] = {0, SPK_MSG_TYPE_END, 200, 0xFFFF};
    for (size_t i = 0; i < sizeof bad_types / sizeof *bad_types; i++) {
        raw_header(b, SPK_PROTO_MAGIC, 1, bad_types[i], 0, 0, 1);
        ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    }
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_HEARTBEAT, 0x2, 8, 1); /* flag not allowed */
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_HEARTBEAT, 0, 9, 1); /* length above the type's */
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_COMMAND, 0, 7, 1); /* below the type's minimum */
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_COMMAND, 0, SPK_PROTO_MAX_PAYLOAD + 1, 1);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_COMMAND, 0, 0xFFFFFFFFu, 1);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_ERR_FORMAT);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE - 1, &h), SPK_ERR_FORMAT);
    /* The largest allowed command header is accepted. */
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_COMMAND, SPK_PROTO_F_NOREPLY, SPK_PROTO_MAX_PAYLOAD, 1);
    ck_assert_int_eq(spk_proto_decode_header(b, SPK_PROTO_HEADER_SIZE, &h), SPK_OK);
    ck_assert_uint_eq(h.length, SPK_PROTO_MAX_PAYLOAD);
}
END_TEST

START_TEST(payload_fields_are_bounds_checked)
{
    uint8_t b[SPK_PROTO_HEADER_SIZE + 128];
    spk_proto_msg m;
    size_t used;
    uint8_t *p = b + SPK_PROTO_HEADER_SIZE;
    /* ERROR: message length disagrees with the payload length. */
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_ERROR, 0, 14, 1);
    spk_le_put32(p, SPK_ERR_IO);
    spk_le_put32(p + 4, 1);
    spk_le_put16(p + 8, 5);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_ERR_FORMAT);
    spk_le_put16(p + 8, 4);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_OK);
    ck_assert_uint_eq(used, SPK_PROTO_HEADER_SIZE + 14);
    /* ERROR: status 0 and past the last status. */
    spk_le_put32(p, 0);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_ERR_FORMAT);
    spk_le_put32(p, SPK_STATUS_COUNT);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_ERR_FORMAT);
    /* ALLGATHER: item_len * n_items overflowing 32 bits, and zero items. */
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_ALLGATHER, 0, 12 + 2, 1);
    spk_le_put32(p, 1);
    spk_le_put32(p + 4, 0x80000001u);
    spk_le_put32(p + 8, 2);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_ERR_FORMAT);
    spk_le_put32(p + 4, 2);
    spk_le_put32(p + 8, 0);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_ERR_FORMAT);
    spk_le_put32(p + 8, 1);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 14, &m, &used), SPK_OK);
    /* REPLY: message longer than the payload. */
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_REPLY, 0, 12, 1);
    spk_le_put32(p, 1);
    spk_le_put32(p + 4, SPK_OK);
    spk_le_put16(p + 8, 3);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 12, &m, &used), SPK_ERR_FORMAT);
    spk_le_put16(p + 8, 2);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 12, &m, &used), SPK_OK);
    ck_assert_uint_eq(m.u.reply.len, 0);
    /* HELLO: rank 0 and rank >= world are not joiners. */
    raw_header(b, SPK_PROTO_MAGIC, 1, SPK_MSG_HELLO, 0, 72, 1);
    memset(p, 0, 72);
    spk_le_put32(p, 0);
    spk_le_put32(p + 4, 2);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 72, &m, &used), SPK_ERR_FORMAT);
    spk_le_put32(p, 2);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 72, &m, &used), SPK_ERR_FORMAT);
    spk_le_put32(p, 1);
    ck_assert_int_eq(dec(b, SPK_PROTO_HEADER_SIZE + 72, &m, &used), SPK_OK);
}
END_TEST

START_TEST(partial_frames_ask_for_more_and_garbage_fails_fast)
{
    uint8_t buf[256];
    spk_proto_msg m = {0}, d;
    m.h.type = SPK_MSG_ERROR;
    m.u.error.status = SPK_ERR_AUTH;
    m.u.error.msg = "nope";
    m.u.error.msg_len = 4;
    size_t n = enc(&m, buf, sizeof buf), used = 99;
    for (size_t k = 0; k < n; k++) {
        ck_assert_int_eq(dec(buf, k, &d, &used), SPK_OK);
        ck_assert_uint_eq(used, 0);
    }
    const uint8_t get[] = "GET / HTTP/1.1\r\n";
    ck_assert_int_eq(dec(get, 1, &d, &used), SPK_ERR_FORMAT);
    /* Two frames back to back decode one at a time. */
    memcpy(buf + n, buf, n);
    ck_assert_int_eq(dec(buf, 2 * n, &d, &used), SPK_OK);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(dec(buf + used, n, &d, &used), SPK_OK);
    ck_assert_uint_eq(used, n);
}
END_TEST

START_TEST(encoder_refuses_what_the_decoder_would)
{
    uint8_t buf[64];
    size_t n;
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_COMMAND;
    m.u.command.data = buf;
    m.u.command.len = SPK_PROTO_MAX_PAYLOAD; /* + 8 header bytes of the command */
    ck_assert_int_eq(spk_proto_encode(&m, buf, sizeof buf, &n), SPK_ERR_TOO_LONG);
    m.u.command.len = 100;
    ck_assert_int_eq(spk_proto_encode(&m, buf, sizeof buf, &n), SPK_ERR_TOO_LONG);
    ck_assert_uint_eq(n, 0);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_ERROR;
    m.u.error.status = SPK_OK;
    ck_assert_int_eq(spk_proto_encode(&m, buf, sizeof buf, &n), SPK_ERR_INVALID_ARG);
    memset(&m, 0, sizeof m);
    m.h.type = SPK_MSG_HEARTBEAT;
    m.h.flags = 1;
    ck_assert_int_eq(spk_proto_encode(&m, buf, sizeof buf, &n), SPK_ERR_INVALID_ARG);
    memset(&m, 0, sizeof m);
    m.h.type = 42;
    ck_assert_int_eq(spk_proto_encode(&m, buf, sizeof buf, &n), SPK_ERR_INVALID_ARG);
}
END_TEST

/* A sealed frame decodes to the same fields, and any changed bit, sequence number or key makes
 * its tag fail: what the control plane relies on against a man in the middle. */
START_TEST(sealed_frames_refuse_any_change)
{
    uint8_t key[SPK_PROTO_KEY_BYTES], other[SPK_PROTO_KEY_BYTES];
    for (unsigned i = 0; i < sizeof key; i++) {
        key[i] = (uint8_t)(i * 7 + 1);
        other[i] = key[i];
    }
    other[5] ^= 1;
    const char msg[] = "ok", data[] = "token 42";
    spk_proto_msg m = {0};
    m.h.type = SPK_MSG_REPLY;
    m.h.flags = SPK_PROTO_F_SEALED;
    m.h.seq = 9;
    m.u.reply.req_id = 77;
    m.u.reply.msg = msg;
    m.u.reply.msg_len = 2;
    m.u.reply.data = (const uint8_t *)data;
    m.u.reply.len = sizeof data;
    uint8_t buf[256];
    size_t n = enc(&m, buf, sizeof buf);
    ck_assert_uint_eq(n, SPK_PROTO_HEADER_SIZE + 10 + 2 + sizeof data + SPK_PROTO_TAG_BYTES);
    ck_assert_int_ne(spk_proto_verify(buf, n, key), 0); /* zero tag until sealed */
    spk_proto_seal(buf, n, key);
    ck_assert_int_eq(spk_proto_verify(buf, n, key), 0);
    ck_assert_int_ne(spk_proto_verify(buf, n, other), 0);
    ck_assert_int_ne(spk_proto_verify(buf, n - 1, key), 0);
    spk_proto_msg d;
    size_t used = 0;
    ck_assert_int_eq(dec(buf, n, &d, &used), SPK_OK);
    ck_assert_uint_eq(used, n);
    ck_assert_uint_eq(d.u.reply.req_id, 77);
    ck_assert_uint_eq(d.u.reply.len, sizeof data); /* the tag is not part of the data */
    ck_assert_mem_eq(d.u.reply.data, data, sizeof data);
    for (size_t bit = 0; bit < n * 8; bit++) {
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        ck_assert_msg(spk_proto_verify(buf, n, key) != 0, "bit %zu flipped and still verified",
                      bit);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    /* The same message with the next sequence number does not carry the old tag. */
    uint8_t buf2[256];
    m.h.seq = 10;
    size_t n2 = enc(&m, buf2, sizeof buf2);
    memcpy(buf2 + n2 - SPK_PROTO_TAG_BYTES, buf + n - SPK_PROTO_TAG_BYTES, SPK_PROTO_TAG_BYTES);
    ck_assert_int_ne(spk_proto_verify(buf2, n2, key), 0);
    /* An unsealed frame never verifies; SEALED is refused on the handshake's own frames. */
    m.h.flags = 0;
    n2 = enc(&m, buf2, sizeof buf2);
    ck_assert_int_ne(spk_proto_verify(buf2, n2, key), 0);
    spk_proto_msg ch = {0};
    ch.h.type = SPK_MSG_CHALLENGE;
    ch.h.flags = SPK_PROTO_F_SEALED;
    ck_assert_int_eq(spk_proto_encode(&ch, buf2, sizeof buf2, &n2), SPK_ERR_INVALID_ARG);
    /* A sealed header too short for its tag is malformed. */
    m.h.type = SPK_MSG_SHUTDOWN;
    m.h.flags = SPK_PROTO_F_SEALED;
    n2 = enc(&m, buf2, sizeof buf2);
    ck_assert_uint_eq(n2, SPK_PROTO_HEADER_SIZE + SPK_PROTO_TAG_BYTES);
    spk_le_put32(buf2 + 12, SPK_PROTO_TAG_BYTES - 1);
    ck_assert_int_eq(dec(buf2, n2, &d, &used), SPK_ERR_FORMAT);
}
END_TEST

START_TEST(peer_text_is_sanitized)
{
    char out[16];
    const char evil[] = "ok\n\x1b[31mFAKE\r\x7f\xff long tail beyond";
    spk_proto_sanitize(out, sizeof out, evil, sizeof evil - 1);
    ck_assert_str_eq(out, "ok??[31mFAKE???");
    spk_proto_sanitize(out, sizeof out, NULL, 5);
    ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(random_and_mutated_bytes_never_crash)
{
    uint64_t s = 12345;
    uint8_t valid[128], buf[128];
    spk_proto_msg m = {0}, d;
    m.h.type = SPK_MSG_REPLY;
    m.u.reply.msg = "abc";
    m.u.reply.msg_len = 3;
    m.u.reply.data = (const uint8_t *)"xyz";
    m.u.reply.len = 3;
    size_t vn = enc(&m, valid, sizeof valid);
    int ok = 0, bad = 0;
    for (int it = 0; it < 200000; it++) {
        size_t n;
        if (it & 1) {
            n = (size_t)(spk_test_rand(&s) % sizeof buf);
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)spk_test_rand(&s);
        } else {
            n = vn;
            memcpy(buf, valid, vn);
            int flips = 1 + (int)(spk_test_rand(&s) % 3);
            for (int f = 0; f < flips; f++)
                buf[spk_test_rand(&s) % vn] ^= (uint8_t)(1u << (spk_test_rand(&s) % 8));
        }
        /* Exactly-sized heap copy so ASan catches any read past the end. */
        uint8_t *h = malloc(n ? n : 1);
        memcpy(h, buf, n);
        size_t used = 0;
        spk_status st = dec(h, n, &d, &used);
        ck_assert(st == SPK_OK || st == SPK_ERR_FORMAT);
        ck_assert_uint_le(used, n);
        if (st == SPK_OK && used)
            ok++;
        else if (st != SPK_OK)
            bad++;
        free(h);
    }
    ck_assert_int_gt(ok, 0);
    ck_assert_int_gt(bad, 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("proto");
    TCase *t = tcase_create("proto");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, header_is_explicit_little_endian);
    tcase_add_test(t, every_type_round_trips);
    tcase_add_test(t, header_fields_are_bounds_checked);
    tcase_add_test(t, payload_fields_are_bounds_checked);
    tcase_add_test(t, partial_frames_ask_for_more_and_garbage_fails_fast);
    tcase_add_test(t, encoder_refuses_what_the_decoder_would);
    tcase_add_test(t, random_and_mutated_bytes_never_crash);
    tcase_add_test(t, sealed_frames_refuse_any_change);
    tcase_add_test(t, peer_text_is_sanitized);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return spk_test_run(suite()); }

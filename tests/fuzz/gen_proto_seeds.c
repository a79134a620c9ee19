/*
 * Writes the seed corpus of fuzz_proto: one valid frame of every control message type, and one
 * file with all of them back to back (a stream). Not built by CMake; run by hand:
 *   cc -Iinclude -Ilib tests/fuzz/gen_proto_seeds.c build/libsparkinfer.a \
 *      $(pkg-config --static --libs libsodium libpcre2-8) -lm -o /tmp/gen && \
 *   /tmp/gen tests/fuzz/corpus/fuzz_proto
 */
#include <stdio.h>
#include <string.h>

#include "cluster/proto.h"

static int put(const char *dir, const char *name, const uint8_t *b, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    static const uint8_t data[24] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                     13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24};
    spk_proto_msg m[11];
    memset(m, 0, sizeof m);
    for (int i = 0; i < 11; i++)
        m[i].h.type = (uint16_t)(i + 1);
    memset(m[0].u.challenge.nonce, 0x11, sizeof m[0].u.challenge.nonce);
    m[1].u.hello.rank = 1, m[1].u.hello.world_size = 2;
    m[3].u.version.lib_version = 100, m[3].u.version.proto_version = 1;
    m[4].u.heartbeat.time_ns = 123456789;
    m[6].u.error.status = 7, m[6].u.error.rank = 1, m[6].u.error.msg = "peer lost",
    m[6].u.error.msg_len = 9;
    m[7].u.allgather.round = 1, m[7].u.allgather.item_len = 8, m[7].u.allgather.n_items = 2,
    m[7].u.allgather.data = data;
    m[8].u.barrier.round = 3;
    m[9].u.command.cmd_id = 2, m[9].u.command.req_id = 5, m[9].u.command.data = data,
    m[9].u.command.len = 24;
    m[10].u.reply.req_id = 5, m[10].u.reply.status = 0, m[10].u.reply.msg = "ok",
    m[10].u.reply.msg_len = 2, m[10].u.reply.data = data, m[10].u.reply.len = 12;
    uint8_t all[4096];
    size_t total = 0;
    int bad = 0;
    for (int i = 0; i < 11; i++) {
        uint8_t buf[512];
        size_t n = 0;
        if (spk_proto_encode(&m[i], buf, sizeof buf, &n) != SPK_OK) {
            fprintf(stderr, "encode %s: %s\n", spk_proto_type_name(m[i].h.type), spk_last_error());
            return 1;
        }
        char name[64];
        snprintf(name, sizeof name, "%02d_%s", i + 1, spk_proto_type_name(m[i].h.type));
        bad |= put(dir, name, buf, n);
        memcpy(all + total, buf, n);
        total += n;
    }
    return bad | put(dir, "stream_all", all, total);
}

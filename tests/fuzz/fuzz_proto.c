/*
 * libFuzzer target for the control-plane decoder: arbitrary bytes are parsed as a stream of
 * frames. Properties: the decoder never reads outside the input (ASan), never consumes more than
 * it was given, every frame it accepts re-encodes to exactly the same bytes (sealed frames: up
 * to their tag), and the tag check of a sealed frame never reads outside it.
 * Build: cmake -DSPK_FUZZ=ON -DCMAKE_C_COMPILER=clang; run: ./fuzz_proto -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy to an exactly-sized heap block so any over-read is caught. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    size_t off = 0;
    while (off < size) {
        spk_proto_msg m;
        size_t used = 0;
        if (spk_proto_decode(buf + off, size - off, &m, &used) != SPK_OK || used == 0)
            break;
        if (used > size - off)
            abort();
        /* VERSION may carry trailing bytes a newer peer added; they are not re-encoded. */
        if (!(m.h.type == SPK_MSG_VERSION && m.h.length != 8)) {
            uint8_t *again = malloc(used);
            size_t n = 0;
            if (!again)
                break;
            /* A sealed frame re-encodes with a zero tag: compare up to the tag. */
            size_t tag = (m.h.flags & SPK_PROTO_F_SEALED) ? SPK_PROTO_TAG_BYTES : 0;
            if (spk_proto_encode(&m, again, used, &n) != SPK_OK || n != used ||
                memcmp(again, buf + off, used - tag) != 0)
                abort();
            /* The tag check runs on whatever bytes arrived (ASan watches its reads). */
            static const uint8_t key[SPK_PROTO_KEY_BYTES] = {1};
            if (tag)
                (void)spk_proto_verify(buf + off, used, key);
            free(again);
        }
        off += used;
    }
    /* The header decoder alone, at every offset of short inputs. */
    for (size_t i = 0; size <= 256 && i + SPK_PROTO_HEADER_SIZE <= size; i++) {
        spk_proto_header h;
        spk_proto_decode_header(buf + i, size - i, &h);
    }
    free(buf);
    return 0;
}

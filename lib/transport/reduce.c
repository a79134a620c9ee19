/* Element sums and chunk partitions shared by the transports. */
#include "transport/reduce.h"

#include <string.h>

#include "common/dtype.h"

size_t spk_tr_dtype_size(spk_transport_dtype dt)
{
    switch (dt) {
    case SPK_TRANSPORT_F32:
        return 4;
    case SPK_TRANSPORT_F16:
    case SPK_TRANSPORT_BF16:
        return 2;
    }
    return 0;
}

void spk_tr_sum_into(void *acc, const void *in, size_t count, spk_transport_dtype dt)
{
    if (dt == SPK_TRANSPORT_F32) {
        float *a = acc;
        const float *b = in;
        for (size_t i = 0; i < count; i++)
            a[i] += b[i];
    } else if (dt == SPK_TRANSPORT_F16) {
        uint16_t *a = acc;
        const uint16_t *b = in;
        for (size_t i = 0; i < count; i++)
            a[i] = spk_f32_to_f16(spk_f16_to_f32(a[i]) + spk_f16_to_f32(b[i]));
    } else if (dt == SPK_TRANSPORT_BF16) {
        uint16_t *a = acc;
        const uint16_t *b = in;
        for (size_t i = 0; i < count; i++)
            a[i] = spk_f32_to_bf16(spk_bf16_to_f32(a[i]) + spk_bf16_to_f32(b[i]));
    }
}

static float load(const void *p, size_t i, spk_transport_dtype dt)
{
    if (dt == SPK_TRANSPORT_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == SPK_TRANSPORT_F16 ? spk_f16_to_f32(h) : spk_bf16_to_f32(h);
}

void spk_tr_sum_ordered(void *out, const void *const *ins, int n, size_t count,
                        spk_transport_dtype dt)
{
    for (size_t i = 0; i < count; i++) {
        float s = load(ins[0], i, dt);
        for (int r = 1; r < n; r++)
            s += load(ins[r], i, dt);
        if (dt == SPK_TRANSPORT_F32)
            ((float *)out)[i] = s;
        else if (dt == SPK_TRANSPORT_F16)
            ((uint16_t *)out)[i] = spk_f32_to_f16(s);
        else
            ((uint16_t *)out)[i] = spk_f32_to_bf16(s);
    }
}

void spk_tr_chunk(size_t count, int n, int i, size_t *off, size_t *len)
{
    size_t un = (size_t)n, ui = (size_t)i;
    size_t base = count / un, extra = count % un;
    *len = base + (ui < extra ? 1 : 0);
    *off = ui * base + (ui < extra ? ui : extra);
}

size_t spk_tr_n_pieces(size_t bytes, size_t piece)
{
    return piece == 0 ? 0 : (bytes + piece - 1) / piece;
}

// The activations rounded to int8 (PnlQuantX), and the scalar int8 kernel: the reference the
// vector one (int8.cpp) must agree with, and the int8 path of the levels without AVX512_VNNI.
//
// Why int8 activations: a masked 4-bit step of the bfloat16 kernel spends its issue slots on
// turning codes into bfloat16 weights (two table lookups a step, avx512bf16.cpp); with int8
// activations the codes multiply as they are (vpdpbusd: unsigned bytes times signed bytes), the
// zero point and the scales applied once per group. The price is the activations' rounding, which
// the exact kernels do not make: an opt-in (runtime/int8_activations.py).
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace {

float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

size_t aligned(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

}  // namespace

extern "C" size_t pnl_quantize_x_bytes(int64_t cols_pad, int tokens) {
    const int64_t steps = cols_pad / 64;
    return aligned((size_t)cols_pad * tokens) + 2 * aligned((size_t)steps * tokens * sizeof(float));
}

extern "C" PnlQuantX pnl_quantx_in(int64_t cols_pad, int tokens, uint8_t* buffer) {
    const int64_t steps = cols_pad / 64;
    float* scale = (float*)(buffer + aligned((size_t)cols_pad * tokens));
    float* sum = scale + aligned((size_t)steps * tokens * sizeof(float)) / sizeof(float);
    return PnlQuantX{(const int8_t*)buffer, scale, sum, steps, tokens};
}

extern "C" PnlQuantX pnl_quantize_x(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                                    uint8_t* buffer) {
    const PnlQuantX out = pnl_quantx_in(cols_pad, tokens, buffer);
    const int64_t steps = out.steps;
    int8_t* q = (int8_t*)buffer;
    float* scale = (float*)out.scale;
    float* sum = (float*)out.sum;
    float block[PNL_INT8_BLOCK];
    for (int t = 0; t < tokens; ++t) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += PNL_INT8_BLOCK) {
            const int64_t width = cols_pad - c0 < PNL_INT8_BLOCK ? cols_pad - c0 : PNL_INT8_BLOCK;
            float amax = 0.0f;
            for (int64_t c = 0; c < width; ++c) {
                const int64_t col = c0 + c;
                float v = 0.0f;
                if (col < cols) v = x_bf16 ? bf16_to_float(((const uint16_t*)x)[t * cols + col]) : ((const float*)x)[t * cols + col];
                block[c] = v;
                const float a = fabsf(v);
                amax = a > amax ? a : amax;
            }
            // amax / 127 and 127 / amax, each one correctly rounded float32 division (the Python
            // reference, runtime/int8_activations.py, does the same operations)
            const float s = amax > 0.0f ? amax / 127.0f : 0.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (int64_t step = c0 / 64; step * 64 < c0 + width; ++step) {
                int8_t* dst = q + (step * tokens + t) * 64;
                int32_t total = 0;
                for (int c = 0; c < 64; ++c) {
                    float r = nearbyintf(block[step * 64 - c0 + c] * inv);  // nearest even
                    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
                    dst[c] = (int8_t)r;
                    total += dst[c];
                }
                scale[t * steps + step] = s;
                sum[t * steps + step] = s * (float)total;
            }
        }
    }
    return out;
}

extern "C" int pnl_int8_reads(const PnlWeight* w) {
    if (w->value_kind != PNL_CODES || (w->code_bits != 4 && w->code_bits != 8)) return 0;
    return w->groups == 1 || w->group_size % 64 == 0;
}

// The vector kernels' scratch (int8.cpp, int8_avx2.cpp): per call, for each token and group, the
// sum over the group's steps of scale * sum(q) (the zero point's term), tokens x groups floats;
// then (pnl_int8_tables_in) a block of rows' tables, at most 12 floats a step (rows x tokens <= 8
// factors and at most 4 rows' fills per segment of 1 or 2 steps), from 9 tokens a panel's rows'
// tables ((tokens + 1) floats a row and segment), or a row's codes spread to bytes (cols_pad,
// and 128 for loads past the end).
extern "C" size_t pnl_int8_scratch_bytes(const PnlWeight* w, int tokens) {
    const size_t spread = (size_t)w->cols_pad + 128;
    const size_t steps = (size_t)w->cols_pad / 64;
    const size_t panel = tokens > 8 ? (size_t)PNL_INT8_PANEL_ROWS * (tokens + 1) * steps * sizeof(float) : 0;
    return aligned((size_t)tokens * w->groups * sizeof(float)) + (spread > panel ? spread : panel) + 64;
}

extern "C" uint8_t* pnl_int8_tables_in(const PnlWeight* w, int tokens, uint8_t* scratch) {
    return scratch + aligned((size_t)tokens * w->groups * sizeof(float));
}

extern "C" const float* pnl_int8_group_sums(const PnlWeight* w, const PnlQuantX* x, uint8_t* scratch) {
    const int64_t G = w->groups, words = w->cols_pad / 64, gs = G == 1 ? w->cols_pad : w->group_size;
    float* gsum = (float*)scratch;
    for (int t = 0; t < x->tokens; ++t)
        for (int64_t g = 0; g < G; ++g) {
            float total = 0.0f;
            const int64_t end = g == G - 1 ? words : (g + 1) * gs / 64;  // the last group takes any rest
            for (int64_t word = g * gs / 64; word < end && word < words; ++word) total += x->sum[t * words + word];
            gsum[t * G + g] = total;
        }
    return gsum;
}

// y = sum over groups of scale_g * sum over the group's steps of x.scale[step] * sum over the
// step's stored columns of (code - zero_g) * q: the same sums as int8.cpp in another order.
extern "C" void pnl_rows_int8_portable(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin,
                                       int64_t row_end, uint8_t* scratch) {
    (void)scratch;
    const int64_t words = w->cols_pad / 64, gs = w->groups == 1 ? w->cols_pad : w->group_size;
    const int bits = w->code_bits;
    const uint32_t code_mask = (1u << bits) - 1;
    const uint8_t* packed = (const uint8_t*)w->values;
    const int T = x->tokens;
    for (int64_t r = row_begin; r < row_end; ++r) {
        float acc[16] = {};
        int64_t j = w->row_start[r];
        for (int64_t word = 0; word < words; ++word) {
            const int64_t g = word * 64 / gs < w->groups ? word * 64 / gs : w->groups - 1;
            const float s = w->scales[r * w->groups + g];
            const int32_t z = (int32_t)w->zeros[r * w->groups + g];
            const uint64_t m = w->has_mask ? w->mask[r * words + word] : ~(uint64_t)0;
            int32_t dot[16] = {};
            for (uint64_t left = m; left; left &= left - 1, ++j) {
                const int col = __builtin_ctzll(left);
                const int64_t bit = j * bits;
                const int32_t code = (int32_t)((packed[bit >> 3] >> (bit & 7)) & code_mask);
                for (int t = 0; t < T; ++t) dot[t] += (code - z) * x->q[(word * T + t) * 64 + col];
            }
            for (int t = 0; t < T; ++t) acc[t] += s * (x->scale[t * words + word] * (float)dot[t]);
        }
        for (int t = 0; t < T; ++t) y[t * w->rows + r] = acc[t];
    }
}

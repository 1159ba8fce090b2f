// The scalar reference kernel: any value kind, code width and group size, on any CPU.
// The vector kernels must agree with it; it is also their fallback for what they do not read
// (2-bit codes, groups that are not a multiple of their lane count).
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace {

float bits_to_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint32_t float_to_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000 | (mant << 13));
    if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
    float tiny = (float)mant * (1.0f / 16777216.0f);  // subnormal: mant * 2^-24, exact
    return sign ? -tiny : tiny;
}

// float32 -> float16 bits, rounding to nearest even as torch's .to(float16) does.
uint16_t half_bits(float f) {
    uint32_t x = float_to_bits(f), a = x & 0x7fffffffu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (a > 0x7f800000u) return sign | 0x7e00u;   // nan
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // inf, or rounds past 65504
    if (a < 0x38800000u) {  // below float16's normal range: a multiple of 2^-24
        float scaled = bits_to_float(a) * 16777216.0f;  // exact: a power-of-two scaling
        // nearest even integer: float32 rounding of scaled + 2^23 does it for scaled < 2^23
        float r = (scaled + 8388608.0f) - 8388608.0f;
        return sign | (uint16_t)r;
    }
    uint32_t mant = a & 0x7fffff, exp = (a >> 23) - 112;
    uint32_t half = (exp << 10) | (mant >> 13), rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half += 1;
    return sign | (uint16_t)half;
}

float round_to_half(float f) { return half_to_float(half_bits(f)); }

float round_to_bf16(float f) {
    uint32_t x = float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return f;  // nan
    x = (x + 0x7fffu + ((x >> 16) & 1)) & 0xffff0000u;
    return bits_to_float(x);
}

// round_to_bf16's bits, rounded on the integer (one move out of the float register, not a
// round trip: twice as fast in the expansion's loop)
uint16_t bf16_bits(float f) {
    uint32_t x = float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(x >> 16);  // nan: as round_to_bf16 leaves it
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

float round_to(float v, int dtype) {
    if (dtype == PNL_F16) return round_to_half(v);
    if (dtype == PNL_BF16) return round_to_bf16(v);
    return v;
}

// Stored value j of the layer (j counts values, or codes), before any scale.
float stored(const PnlWeight* w, int64_t j) {
    switch (w->value_kind) {
        case PNL_F32: return ((const float*)w->values)[j];
        case PNL_F16: return half_to_float(((const uint16_t*)w->values)[j]);
        case PNL_BF16: return bits_to_float((uint32_t)((const uint16_t*)w->values)[j] << 16);
        default: {
            int bits = w->code_bits;
            int64_t bit = j * bits;
            uint32_t code = (((const uint8_t*)w->values)[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
            return (float)code;
        }
    }
}

// Calls visit(col, j) for each stored value of row r in column order: its column and its index
// among the layer's stored values (a dense row's padding columns past `cols` are skipped).
template <class Visit>
inline void for_each_stored(const PnlWeight* w, int64_t r, Visit visit) {
    const int64_t words = w->cols_pad / 64;
    int64_t j = w->row_start[r];
    for (int64_t word = 0; word < words; ++word) {
        uint64_t bits = w->has_mask ? w->mask[r * words + word] : ~(uint64_t)0;
        while (bits) {
            int64_t col = word * 64 + __builtin_ctzll(bits);
            bits &= bits - 1;
            int64_t k = j++;
            if (col < w->cols) visit(col, k);
        }
    }
}

}  // namespace

extern "C" int pnl_vector_reads(const PnlWeight* w, int lanes) {
    if (w->value_kind != PNL_CODES) return 1;
    if (w->code_bits != 4 && w->code_bits != 8) return 0;
    return w->groups == 1 || w->group_size % lanes == 0;
}

extern "C" void pnl_rows_portable(const PnlWeight* w, const float* xp, int tokens, float* y,
                                  int64_t row_begin, int64_t row_end, uint8_t* scratch) {
    (void)scratch;
    const int64_t cp = w->cols_pad;
    const bool codes = w->value_kind == PNL_CODES;
    float acc[16];
    for (int64_t r = row_begin; r < row_end; ++r) {
        for (int t = 0; t < tokens; ++t) acc[t] = 0.0f;
        int64_t g = r * w->groups, group_end = w->group_size;  // the group of the columns before group_end
        for_each_stored(w, r, [&](int64_t col, int64_t j) {
            float v = stored(w, j);
            if (codes) {
                for (; col >= group_end && g + 1 < (r + 1) * w->groups; group_end += w->group_size) ++g;
                v = round_to(w->scales[g] * (v - w->zeros[g]), w->weight_dtype);
            }
            for (int t = 0; t < tokens; ++t) acc[t] += v * xp[t * cp + col];
        });
        for (int t = 0; t < tokens; ++t) y[t * w->rows + r] = acc[t];
    }
}

// Rows [row_begin, row_end) of the dense weight out (R, C) in the weight's dtype (float32, or
// float16 / bfloat16 bits): stored values copied as they are, codes dequantized with the
// operations of the format's decompress_weight (float32 scale * (code - zero), rounded once to
// the dtype), zeros elsewhere. Bit for bit the format's expansion. Scalar (the avx512bf16 level
// has a vector one); a row's group is followed as its columns advance.
extern "C" void pnl_expand_rows(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end) {
    const int64_t C = w->cols;
    const bool codes = w->value_kind == PNL_CODES;
    const int64_t width = w->weight_dtype == PNL_F32 ? 4 : 2;
    const uint8_t* packed = (const uint8_t*)w->values;
    const int bits = w->code_bits;
    const uint32_t code_mask = codes ? (1u << bits) - 1 : 0;
    for (int64_t r = row_begin; r < row_end; ++r) {
        uint8_t* row = (uint8_t*)out + r * C * width;
        memset(row, 0, C * width);
        if (!codes) {
            for_each_stored(w, r, [&](int64_t col, int64_t k) {
                if (width == 4) ((float*)row)[col] = ((const float*)w->values)[k];
                else ((uint16_t*)row)[col] = ((const uint16_t*)w->values)[k];
            });
            continue;
        }
        const float* scales = w->scales + r * w->groups;
        const uint8_t* zeros = w->zeros + r * w->groups;
        int64_t g = 0, group_end = w->group_size;  // columns [group_end - group_size, group_end) are group g
        float s = scales[0], z = zeros[0];
        for_each_stored(w, r, [&](int64_t col, int64_t k) {
            while (col >= group_end && g + 1 < w->groups) {
                ++g;
                group_end += w->group_size;
                s = scales[g];
                z = zeros[g];
            }
            const int64_t bit = k * bits;
            const float v = s * ((float)((packed[bit >> 3] >> (bit & 7)) & code_mask) - z);
            if (w->weight_dtype == PNL_F32) ((float*)row)[col] = v;
            else if (w->weight_dtype == PNL_F16) ((uint16_t*)row)[col] = half_bits(v);
            else ((uint16_t*)row)[col] = bf16_bits(v);
        });
    }
}

#define PNL_ATTEND_NAME pnl_attend_portable
#include "attend.inc"

// AVX2 + FMA + F16C kernels: 8 columns per step, for x86 CPUs without AVX-512.
//
// The same walk as avx512.cpp. AVX2 has no expand instruction: a table indexed by the
// chunk's 8 mask bits gives, for each lane, which loaded value goes there (vpermps) and,
// in its sign bit, whether the lane holds a value at all (a blend with zero). 4-bit codes
// go through two 8-entry tables (codes 0-7 and 8-15) chosen by the code's bit 3.
// Built with -mavx2 -mfma -mf16c; everything here is file-local.
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

namespace {

// kExpand.lane[m][i]: for mask byte m, the rank of lane i among the set lanes, with the sign
// bit set where lane i is set. Computed by the compiler: no code runs at library load.
struct ExpandTable {
    int32_t lane[256][8];
    constexpr ExpandTable() : lane() {
        for (int m = 0; m < 256; ++m) {
            int rank = 0;
            for (int i = 0; i < 8; ++i) {
                if (m >> i & 1) lane[m][i] = (int32_t)(0x80000000u | (uint32_t)rank++);
                else lane[m][i] = 0;
            }
        }
    }
};
constexpr ExpandTable kExpand{};

inline __m256 expand(__m256 packed, unsigned m) {
    __m256i idx = _mm256_loadu_si256((const __m256i*)kExpand.lane[m]);
    return _mm256_blendv_ps(_mm256_setzero_ps(), _mm256_permutevar8x32_ps(packed, idx), _mm256_castsi256_ps(idx));
}

inline __m256 round_to(__m256 v, int dtype) {
    if (dtype == PNL_F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (dtype == PNL_BF16) {
        __m256i x = _mm256_castps_si256(v);
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
        x = _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
        return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
    }
    return v;
}

template <bool MASKED>
inline __m256 place(__m256 v, unsigned m) { return MASKED ? expand(v, m) : v; }

struct F32Source {
    const float* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const float*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m256 next(int n) { __m256 v = _mm256_loadu_ps(p); p += n; return v; }
};

struct BF16Source {
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m256 next(int n) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
        p += n;
        return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
};

struct F16Source {
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m256 next(int n) { __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); p += n; return v; }
};

struct Code8Source {
    const uint8_t* p;
    __m256 scale, zero;
    int dtype;
    void row(const PnlWeight* w, int64_t r, uint8_t*) {
        p = (const uint8_t*)w->values + w->row_start[r];
        dtype = w->weight_dtype;
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        scale = _mm256_set1_ps(w->scales[r * w->groups + g]);
        zero = _mm256_set1_ps(w->zeros[r * w->groups + g]);
    }
    __m256 next(int n) {
        __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)));
        p += n;
        return round_to(_mm256_mul_ps(scale, _mm256_sub_ps(c, zero)), dtype);
    }
};

struct Code4Source {
    const uint8_t* p;
    __m256 low, high;  // table entries for codes 0-7 and 8-15
    int dtype;
    void row(const PnlWeight* w, int64_t r, uint8_t* scratch) {
        const uint8_t* src = (const uint8_t*)w->values + w->row_start[r] / 2;
        int64_t count = w->row_start[r + 1] - w->row_start[r];
        const __m256i nibble = _mm256_set1_epi16(0x0f0f);
        for (int64_t i = 0; i < (count + 1) / 2; i += 16) {
            __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(src + i)));
            __m256i spread = _mm256_and_si256(_mm256_or_si256(b, _mm256_slli_epi16(b, 4)), nibble);
            _mm256_storeu_si256((__m256i*)(scratch + 2 * i), spread);
        }
        p = scratch;
        dtype = w->weight_dtype;
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        __m256 scale = _mm256_set1_ps(w->scales[r * w->groups + g]);
        __m256 zero = _mm256_set1_ps(w->zeros[r * w->groups + g]);
        __m256 codes = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
        low = round_to(_mm256_mul_ps(scale, _mm256_sub_ps(codes, zero)), dtype);
        codes = _mm256_add_ps(codes, _mm256_set1_ps(8.0f));
        high = round_to(_mm256_mul_ps(scale, _mm256_sub_ps(codes, zero)), dtype);
    }
    __m256 next(int n) {
        __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
        p += n;
        __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, idx), _mm256_permutevar8x32_ps(high, idx), bit3);
    }
};

#include "avx2_sum.inc"

template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const float* xp, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    constexpr int A = NT == 1 ? 4 : NT == 2 ? 2 : 1;
    const int64_t cp = w->cols_pad, words = cp / 64, R = w->rows;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;
    Source src;
    for (int64_t r = r0; r < r1; ++r) {
        __m256 acc[NT][A];
        for (int t = 0; t < NT; ++t)
            for (int a = 0; a < A; ++a) acc[t][a] = _mm256_setzero_ps();
        src.row(w, r, scratch);
        int64_t next_group = 0, g = 0;
        const uint64_t* mrow = MASKED ? w->mask + r * words : nullptr;
        for (int64_t word = 0; word < words; ++word) {
            uint64_t m = MASKED ? mrow[word] : ~(uint64_t)0;
            for (int q = 0; q < 8; ++q) {
                const int64_t c = word * 64 + q * 8;
                if (grouped && c == next_group) {
                    src.group(w, r, g < w->groups ? g : w->groups - 1);
                    ++g;
                    next_group += gs;
                }
                unsigned k = (unsigned)(m >> (8 * q)) & 0xff;
                __m256 v = place<MASKED>(src.next(MASKED ? __builtin_popcount(k) : 8), k);
                for (int t = 0; t < NT; ++t)
                    acc[t][q % A] = _mm256_fmadd_ps(v, _mm256_load_ps(xp + t * cp + c), acc[t][q % A]);
            }
        }
        for (int t = 0; t < NT; ++t) {
            __m256 s = acc[t][0];
            for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[t][a]);
            y[t * R + r] = reduce(s);
        }
    }
}

template <int NT>
void dispatch_kind(const PnlWeight* w, const float* xp, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    const bool masked = w->has_mask != 0;
    switch (w->value_kind) {
        case PNL_F32:
            return masked ? rows<NT, true, F32Source>(w, xp, y, r0, r1, s) : rows<NT, false, F32Source>(w, xp, y, r0, r1, s);
        case PNL_F16:
            return masked ? rows<NT, true, F16Source>(w, xp, y, r0, r1, s) : rows<NT, false, F16Source>(w, xp, y, r0, r1, s);
        case PNL_BF16:
            return masked ? rows<NT, true, BF16Source>(w, xp, y, r0, r1, s)
                          : rows<NT, false, BF16Source>(w, xp, y, r0, r1, s);
        default:
            if (w->code_bits == 8)
                return masked ? rows<NT, true, Code8Source>(w, xp, y, r0, r1, s)
                              : rows<NT, false, Code8Source>(w, xp, y, r0, r1, s);
            return masked ? rows<NT, true, Code4Source>(w, xp, y, r0, r1, s)
                          : rows<NT, false, Code4Source>(w, xp, y, r0, r1, s);
    }
}

template <int NT>
void dispatch_tokens(int tokens, const PnlWeight* w, const float* xp, float* y, int64_t r0, int64_t r1,
                     uint8_t* s) {
    if constexpr (NT > 16) {
        (void)tokens; (void)w; (void)xp; (void)y; (void)r0; (void)r1; (void)s;
    } else {
        if (tokens == NT) return dispatch_kind<NT>(w, xp, y, r0, r1, s);
        dispatch_tokens<NT + 1>(tokens, w, xp, y, r0, r1, s);
    }
}

}  // namespace

extern "C" void pnl_rows_avx2(const PnlWeight* w, const float* xp, int tokens, float* y,
                              int64_t row_begin, int64_t row_end, uint8_t* scratch) {
    if (!pnl_vector_reads(w, 8)) return pnl_rows_portable(w, xp, tokens, y, row_begin, row_end, scratch);
    dispatch_tokens<1>(tokens, w, xp, y, row_begin, row_end, scratch);
}

#define PNL_ATTEND_NAME pnl_attend_avx2
#include "attend.inc"

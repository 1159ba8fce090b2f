// AVX-512 kernels (F, BW, VL, DQ, VBMI2): 32 columns per step.
//
// A row is walked 32 columns at a time. The step's stored values are the next popcount(mask)
// ones of the row: one unaligned load, then an expand in registers puts them at their
// columns, zeros elsewhere (the register form: on Zen 4 the memory form of expand is
// microcoded and slow). The step then meets every token's activations with two FMAs.
//
// bfloat16 values (and 4-bit codes of float32/bfloat16 layers, looked up as 16-bit words)
// take one vpexpandw per 32 columns and become float32 by a shift (even columns) and a mask
// (odd columns), against the activations laid out to match: half the expands and no
// lane-crossing conversions, the cheapest step measured on Zen 4. Other values go 16 at a
// time (vexpandps): float32, float16 (F16C), 8-bit codes (converted), 4-bit codes of float16
// layers and dense 4-bit codes (a 16-entry float32 table per row and group in one register,
// vpermps). Codes become exactly the weights decompress_weight makes. Built with -mavx512*
// flags: the dispatcher calls it only on a CPU that has them. Everything here is file-local.
#include <immintrin.h>
#include <stdint.h>

#include <type_traits>

#include "kernels.h"

namespace {

inline __m512 round_to(__m512 v, int dtype) {
    if (dtype == PNL_F16) return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (dtype == PNL_BF16) {  // round to nearest even on the bits (no NaN reaches here)
        __m512i x = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
        x = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        return _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
    }
    return v;
}

// Sources: the next 16 columns' weights of the current row as float32, expanded by a mask.
struct F32Source {
    const float* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const float*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m512 next(__mmask16 k, int n) {
        __m512 v = _mm512_loadu_ps(p);
        p += n;
        return _mm512_maskz_expand_ps(k, v);
    }
};

struct BF16Source {
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m512 next(__mmask16 k, int n) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
        p += n;
        return _mm512_maskz_expand_ps(k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
};

struct F16Source {
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    __m512 next(__mmask16 k, int n) {
        __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
        p += n;
        return _mm512_maskz_expand_ps(k, v);
    }
};

struct Code8Source {
    const uint8_t* p;
    __m512 scale, zero;
    int dtype;
    void row(const PnlWeight* w, int64_t r, uint8_t*) {
        p = (const uint8_t*)w->values + w->row_start[r];
        dtype = w->weight_dtype;
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        scale = _mm512_set1_ps(w->scales[r * w->groups + g]);
        zero = _mm512_set1_ps(w->zeros[r * w->groups + g]);
    }
    __m512 next(__mmask16 k, int n) {
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)));
        p += n;
        return _mm512_maskz_expand_ps(k, round_to(_mm512_mul_ps(scale, _mm512_sub_ps(c, zero)), dtype));
    }
};

// 4-bit codes: the row's packed codes are first spread to one byte each in scratch (so that
// a chunk's codes start at any code, not only at a byte), then looked up in the group's table.
struct Code4Source {
    const uint8_t* p;
    __m512 table;
    int dtype;
    void row(const PnlWeight* w, int64_t r, uint8_t* scratch) {
        const uint8_t* src = (const uint8_t*)w->values + w->row_start[r] / 2;
        int64_t count = w->row_start[r + 1] - w->row_start[r];
        const __m512i low = _mm512_set1_epi16(0x0f0f);
        for (int64_t i = 0; i < (count + 1) / 2; i += 32) {
            // byte b = (hi << 4 | lo) -> word (hi << 8 | lo): the two codes in order, a byte each
            __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(src + i)));
            __m512i spread = _mm512_and_si512(_mm512_or_si512(b, _mm512_slli_epi16(b, 4)), low);
            _mm512_storeu_si512((void*)(scratch + 2 * i), spread);
        }
        p = scratch;
        dtype = w->weight_dtype;
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512 scale = _mm512_set1_ps(w->scales[r * w->groups + g]);
        __m512 zero = _mm512_set1_ps(w->zeros[r * w->groups + g]);
        table = round_to(_mm512_mul_ps(scale, _mm512_sub_ps(codes, zero)), dtype);
    }
    __m512 next(__mmask16 k, int n) {
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
        p += n;
        return _mm512_maskz_expand_ps(k, _mm512_permutexvar_ps(idx, table));
    }
};

// bfloat16 values, 32 columns a step: one vpexpandw places the step's stored values (16-bit
// lanes), then a shift and a mask turn the even and the odd columns into float32. The tokens'
// activations are laid out to match ("paired": per 32 columns, the 16 even then the 16 odd).
struct BF16PairSource {
    static constexpr bool kPaired = true;
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r, uint8_t*) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    void next(__mmask32 k, int n, __m512& even, __m512& odd) {
        __m512i v = _mm512_maskz_expand_epi16(k, _mm512_loadu_si512((const void*)p));
        p += n;
        even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    }
};

// 4-bit codes of a float32 or bfloat16 layer, 32 columns a step: the packed codes (spread to
// bytes per row, as Code4Source) are looked up in a 16-entry table of 16-bit words, expanded
// with vpexpandw and split as BF16PairSource does. For a bfloat16 layer the table holds the
// weights themselves; for float32 it holds code - zero (exact in bfloat16) and the step is
// multiplied by the group's scale: scale * (code - zero) rounded once, as decompress_weight.
struct Code4PairSource {
    static constexpr bool kPaired = true;
    const uint8_t* p;
    __m512i table;
    __m512 scale;
    bool scaled;
    void row(const PnlWeight* w, int64_t r, uint8_t* scratch) {
        Code4Source spread;
        spread.row(w, r, scratch);
        p = spread.p;
        scaled = w->weight_dtype == PNL_F32;
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        float s = w->scales[r * w->groups + g];
        __m512 v = _mm512_sub_ps(codes, _mm512_set1_ps(w->zeros[r * w->groups + g]));
        if (!scaled) v = round_to(_mm512_mul_ps(_mm512_set1_ps(s), v), PNL_BF16);
        scale = _mm512_set1_ps(s);
        // bfloat16 words of the 16 entries, in the low half of a register (vpermw's table)
        table = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
    }
    void next(__mmask32 k, int n, __m512& even, __m512& odd) {
        __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)p));
        p += n;
        __m512i v = _mm512_maskz_expand_epi16(k, _mm512_permutexvar_epi16(idx, table));
        even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
        if (scaled) {
            even = _mm512_mul_ps(even, scale);
            odd = _mm512_mul_ps(odd, scale);
        }
    }
};

// A 16-column source as a 32-column one: two steps, columns in their natural order.
template <class Source16>
struct Natural {
    static constexpr bool kPaired = false;
    Source16 src;
    void row(const PnlWeight* w, int64_t r, uint8_t* scratch) { src.row(w, r, scratch); }
    void group(const PnlWeight* w, int64_t r, int64_t g) { src.group(w, r, g); }
    template <bool MASKED>
    void next(__mmask32 k, __m512& low, __m512& high) {
        __mmask16 k0 = (__mmask16)k, k1 = (__mmask16)(k >> 16);
        low = src.next(k0, MASKED ? __builtin_popcount((unsigned)k0) : 16);
        high = src.next(k1, MASKED ? __builtin_popcount((unsigned)k1) : 16);
    }
};

inline float reduce(__m512 v) { return _mm512_reduce_add_ps(v); }

// Activations in the paired order: per 32 columns the 16 even ones, then the 16 odd ones.
void pair_columns(const float* xp, int tokens, int64_t cp, float* xq) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t i = 0; i < tokens * cp; i += 32) {
        __m512 a = _mm512_load_ps(xp + i), b = _mm512_load_ps(xp + i + 16);
        _mm512_store_ps(xq + i, _mm512_permutex2var_ps(a, even, b));
        _mm512_store_ps(xq + i + 16, _mm512_permutex2var_ps(a, odd, b));
    }
}

// One token, RB rows at a time: each activation load serves RB rows, and the rows' value
// streams are independent dependency chains (a row alone waits on its own pointer: popcount,
// advance, load). Faster than one row at a time at LLaMA-7B shapes, most where the
// activations outgrow L1 (bench/layer_kernels.py).
template <bool MASKED, class Source, int RB>
void row_block(const PnlWeight* w, const float* x, float* y, int64_t r, uint8_t* row_scratch) {
    const int64_t cp = w->cols_pad, words = cp / 64;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;
    Source src[RB];
    __m512 acc[RB][2];
    const uint64_t* mrow[RB];
    for (int i = 0; i < RB; ++i) {
        src[i].row(w, r + i, row_scratch + i * (cp + 128));  // each row's codes in scratch of its own
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
    }
    int64_t next_group = 0, g = 0;
    for (int64_t word = 0; word < words; ++word) {
        uint64_t m[RB];
        for (int i = 0; i < RB; ++i) m[i] = MASKED ? mrow[i][word] : ~(uint64_t)0;
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const int64_t c = word * 64 + h * 32;
            if (grouped && c == next_group) {
                for (int i = 0; i < RB; ++i) src[i].group(w, r + i, g < w->groups ? g : w->groups - 1);
                ++g;
                next_group += gs;
            }
            const __m512 x0 = _mm512_load_ps(x + c), x1 = _mm512_load_ps(x + c + 16);
#pragma GCC unroll 4
            for (int i = 0; i < RB; ++i) {
                __mmask32 k = (__mmask32)(m[i] >> (32 * h));
                __m512 a, b;
                if constexpr (Source::kPaired) src[i].next(k, MASKED ? __builtin_popcount((unsigned)k) : 32, a, b);
                else src[i].template next<MASKED>(k, a, b);
                acc[i][0] = _mm512_fmadd_ps(a, x0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(b, x1, acc[i][1]);
            }
        }
    }
    for (int i = 0; i < RB; ++i) y[r + i] = reduce(_mm512_add_ps(acc[i][0], acc[i][1]));
}

// NT tokens at once: one pass over the weights serves them all. A accumulators per token
// (more when few tokens) so that consecutive FMAs do not wait on each other.
template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const float* xp, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    constexpr int A = NT == 1 ? 4 : NT <= 3 ? 2 : 1;
    const int64_t cp = w->cols_pad, words = cp / 64, R = w->rows;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;  // one group: never changes
    uint8_t* row_scratch = scratch;
    const float* x = xp;
    if (Source::kPaired) {  // the paired activations first in scratch, the row's codes after
        float* xq = (float*)scratch;
        pair_columns(xp, NT, cp, xq);
        x = xq;
        row_scratch = scratch + NT * cp * sizeof(float);
    }
    int64_t first = r0;
    if constexpr (NT == 1) {  // rows in blocks of 4 (the scratch holds 4 rows' codes after x)
        for (; first + 4 <= r1; first += 4) row_block<MASKED, Source, 4>(w, x, y, first, row_scratch);
    }
    Source src;
    for (int64_t r = first; r < r1; ++r) {
        __m512 acc[NT][A];
        for (int t = 0; t < NT; ++t)
            for (int a = 0; a < A; ++a) acc[t][a] = _mm512_setzero_ps();
        src.row(w, r, row_scratch);
        int64_t next_group = 0, g = 0;
        const uint64_t* mrow = MASKED ? w->mask + r * words : nullptr;
        for (int64_t word = 0; word < words; ++word) {
            uint64_t m = MASKED ? mrow[word] : ~(uint64_t)0;
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const int64_t c = word * 64 + h * 32;
                if (grouped && c == next_group) {
                    src.group(w, r, g < w->groups ? g : w->groups - 1);
                    ++g;
                    next_group += gs;
                }
                __mmask32 k = (__mmask32)(m >> (32 * h));
                __m512 a, b;
                if constexpr (Source::kPaired) src.next(k, MASKED ? __builtin_popcount((unsigned)k) : 32, a, b);
                else src.template next<MASKED>(k, a, b);
                for (int t = 0; t < NT; ++t) {
                    __m512& s0 = acc[t][(2 * h) % A];
                    __m512& s1 = acc[t][(2 * h + 1) % A];
                    s0 = _mm512_fmadd_ps(a, _mm512_load_ps(x + t * cp + c), s0);
                    s1 = _mm512_fmadd_ps(b, _mm512_load_ps(x + t * cp + c + 16), s1);
                }
            }
        }
        for (int t = 0; t < NT; ++t) {
            __m512 s = acc[t][0];
            for (int a = 1; a < A; ++a) s = _mm512_add_ps(s, acc[t][a]);
            y[t * R + r] = reduce(s);
        }
    }
}

// The source that reads w (the kernel's and the expansion's one choice): visit gets a null
// pointer of its type.
template <class Visit>
void with_source(const PnlWeight* w, Visit visit) {
    switch (w->value_kind) {
        case PNL_F32: return visit((Natural<F32Source>*)nullptr);
        case PNL_F16: return visit((Natural<F16Source>*)nullptr);
        case PNL_BF16: return visit((BF16PairSource*)nullptr);
        default:
            if (w->code_bits == 8) return visit((Natural<Code8Source>*)nullptr);
            if (!w->has_mask || w->weight_dtype == PNL_F16) return visit((Natural<Code4Source>*)nullptr);
            return visit((Code4PairSource*)nullptr);
    }
}

template <int NT>
void dispatch_kind(const PnlWeight* w, const float* xp, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    with_source(w, [&](auto* source) {
        using Source = std::remove_pointer_t<decltype(source)>;
        if (w->has_mask) return rows<NT, true, Source>(w, xp, y, r0, r1, s);
        rows<NT, false, Source>(w, xp, y, r0, r1, s);
    });
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

// The expansion (a prefill's dense weight, api.cpp's pnl_expand) from the kernels' own sources:
// each 32 columns' float32 weights (already the weights decompress_weight makes, rounded to the
// layer's dtype) put back in column order, a column without a value +0, and stored in the
// layer's dtype (a bfloat16's high half, a float16 by an exact conversion): the same bits.
inline __mmask16 first16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

inline void store_weights(const PnlWeight* w, void* out, int64_t r, int64_t c, __m512 lo, __m512 hi) {
    const int64_t C = w->cols, left = C - c;
    const __mmask16 k0 = first16(left), k1 = first16(left - 16);
    if (w->weight_dtype == PNL_F32) {
        float* d = (float*)out + r * C + c;
        _mm512_mask_storeu_ps(d, k0, lo);
        _mm512_mask_storeu_ps(d + 16, k1, hi);
        return;
    }
    uint16_t* d = (uint16_t*)out + r * C + c;
    __m256i a, b;
    if (w->weight_dtype == PNL_BF16) {
        a = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(lo), 16));
        b = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(hi), 16));
    } else {
        a = _mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        b = _mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm256_mask_storeu_epi16(d, k0, a);
    _mm256_mask_storeu_epi16(d + 16, k1, b);
}

template <bool MASKED, class Source>
void expand_rows(const PnlWeight* w, void* out, int64_t r0, int64_t r1, uint8_t* scratch) {
    const int64_t C = w->cols, cp = w->cols_pad, words = cp / 64;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;
    // a paired source's even and odd columns back in order: column j of 16 from even[j / 2]
    // (j even) or odd[j / 2] (j odd, index 16 + j / 2)
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_add_epi32(low, _mm512_set1_epi32(8));
    for (int64_t r = r0; r < r1; ++r) {
        Source src;
        src.row(w, r, scratch);
        const uint64_t* mrow = MASKED ? w->mask + r * words : nullptr;
        int64_t next_group = 0, g = 0;
        for (int64_t c = 0; c < C; c += 32) {
            if (grouped && c == next_group) {
                src.group(w, r, g < w->groups ? g : w->groups - 1);
                ++g;
                next_group += gs;
            }
            const __mmask32 k = MASKED ? (__mmask32)(mrow[c / 64] >> (c % 64)) : ~(__mmask32)0;
            __m512 a, b;
            if constexpr (Source::kPaired) {
                src.next(k, MASKED ? __builtin_popcount((unsigned)k) : 32, a, b);
                const __m512 even = a;
                a = _mm512_permutex2var_ps(even, low, b);
                b = _mm512_permutex2var_ps(even, high, b);
            } else {
                src.template next<MASKED>(k, a, b);
            }
            if (MASKED) {  // +0 where no value is stored (a scaled zero could be -0)
                a = _mm512_maskz_mov_ps((__mmask16)k, a);
                b = _mm512_maskz_mov_ps((__mmask16)(k >> 16), b);
            }
            store_weights(w, out, r, c, a, b);
        }
    }
}

template <class Source>
void expand_by_mask(const PnlWeight* w, void* out, int64_t r0, int64_t r1, uint8_t* scratch) {
    if (w->has_mask) return expand_rows<true, Source>(w, out, r0, r1, scratch);
    expand_rows<false, Source>(w, out, r0, r1, scratch);
}

}  // namespace

extern "C" void pnl_rows_avx512(const PnlWeight* w, const float* xp, int tokens, float* y,
                                int64_t row_begin, int64_t row_end, uint8_t* scratch) {
    if (!pnl_vector_reads(w, 32)) return pnl_rows_portable(w, xp, tokens, y, row_begin, row_end, scratch);
    dispatch_tokens<1>(tokens, w, xp, y, row_begin, row_end, scratch);
}

// Rows [row_begin, row_end) of the dense weight, for a weight the kernel reads
// (pnl_vector_reads(w, 32)); scratch holds cols_pad + 128 bytes (a row's spread codes).
extern "C" void pnl_expand_rows_avx512(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end,
                                       uint8_t* scratch) {
    with_source(w, [&](auto* source) {
        expand_by_mask<std::remove_pointer_t<decltype(source)>>(w, out, row_begin, row_end, scratch);
    });
}

#define PNL_ATTEND_NAME pnl_attend_avx512
#include "attend.inc"

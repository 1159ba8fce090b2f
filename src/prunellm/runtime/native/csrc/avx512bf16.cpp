// AVX-512 kernels for bfloat16 activations (the AVX-512 level's features plus AVX512_BF16): 64
// columns a step, the products summed by vdpbf16ps.
//
// A bfloat16 activation times a weight that is itself exactly a bfloat16 is exact in float32,
// so one vdpbf16ps (32 products summed pairwise into 16 float32 lanes) replaces the float32
// path's widening of weights and activations and its two FMAs per 32 columns; the sum stays
// within float32 rounding of expand-then-multiply. (vdpbf16ps treats bfloat16 subnormals, below
// 1e-38, as zero: far below that rounding.) This kernel takes the weights whose values are
// bfloat16 after the format's decompression, or an exact integer times one float32 scale:
//
// - bfloat16 values, masked or dense: one vpexpandw per 32 columns puts the stored values at
//   their columns (register form: the memory form of expand is microcoded on Zen 4);
// - 4-bit codes of bfloat16 and float32 layers, masked or dense: per row and group a 16-entry
//   table of bfloat16 words, looked up with vpermw. A bfloat16 layer's entries are its weights,
//   round_bf16(scale * (code - zero)) as decompress_weight makes them. A float32 layer's are
//   code - zero, an integer in [-255, 15] (zero points are uint8), exact in bfloat16, and the
//   group's partial sum is multiplied by its scale once: within float32 rounding of the sum of
//   float32 weights scale * (code - zero). No pass spreads a row's codes first: a masked row's
//   step loads its 64 codes from the byte holding the first and shifts them by half a byte when
//   the first is a high nibble (vpshrdvq), spreads them to a byte each in registers and places
//   them with one vpexpandb; a column without a value gets index 16, the table's zero half.
//   The even columns' codes (each word's low byte) and the odd columns' (high byte) take one
//   vpermw each, so the activations are laid out per step as the 32 even, then the 32 odd.
//
// Every call lays the activations out step by step (all tokens' 64 columns of a step together:
// rows of 8 KiB would put 16 tokens' loads in one L1 set). Other weights (float32 or float16
// values, 8-bit codes, float16 layers' codes, groups that are not a multiple of 64) and float32
// activations take the AVX-512 float32 kernel (api.cpp decides, pnl_avx512bf16_reads).
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

// GCC 12 warns inside its own headers (the _mm256_undefined_* operand of a 512-bit register's
// halves, as _mm512_reduce_add_ps takes them) where these templates inline it.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

inline __m512 round_bf16(__m512 v) {  // round to nearest even on the bits (no NaN reaches here)
    __m512i x = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    x = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// Sources: the next 64 columns' weights of the current row as two registers of 32 bfloat16.
struct BF16Values {
    static constexpr bool kPermuted = false;  // the activations in column order
    static constexpr bool kScaled = false;
    const uint16_t* p;
    void row(const PnlWeight* w, int64_t r) { p = (const uint16_t*)w->values + w->row_start[r]; }
    void group(const PnlWeight*, int64_t, int64_t) {}
    float scale() const { return 1.0f; }
    template <bool MASKED>
    void next(uint64_t m, __m512bh& a, __m512bh& b) {
        if (MASKED) {
            __mmask32 k0 = (__mmask32)m, k1 = (__mmask32)(m >> 32);
            const uint16_t* q = p + __builtin_popcount((unsigned)k0);
            a = as_bh(_mm512_maskz_expand_epi16(k0, _mm512_loadu_si512((const void*)p)));
            b = as_bh(_mm512_maskz_expand_epi16(k1, _mm512_loadu_si512((const void*)q)));
            p += __builtin_popcountll(m);
        } else {
            a = as_bh(_mm512_loadu_si512((const void*)p));
            b = as_bh(_mm512_loadu_si512((const void*)(p + 32)));
            p += 64;
        }
    }
};

// 4-bit codes (first code of a byte in its low nibble); BF16: the layer's dtype is bfloat16
// (table of weights), else float32 (table of code - zero, scaled per group).
template <bool BF16>
struct Code4Values {
    static constexpr bool kPermuted = true;  // the activations as the lookups give columns
    static constexpr bool kScaled = !BF16;
    const uint8_t* base;
    int64_t p;  // the next code's index
    __m512i table;  // the 16 entries' bfloat16 words, in the low 256 bits (vpermw's table)
    float s;
    void row(const PnlWeight* w, int64_t r) {
        base = (const uint8_t*)w->values;
        p = w->row_start[r];
    }
    void group(const PnlWeight* w, int64_t r, int64_t g) {
        const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        s = w->scales[r * w->groups + g];
        __m512 v = _mm512_sub_ps(codes, _mm512_set1_ps(w->zeros[r * w->groups + g]));
        if (BF16) v = round_bf16(_mm512_mul_ps(_mm512_set1_ps(s), v));
        // a float32's high half is its bfloat16 (exact: integers, or rounded above)
        table = _mm512_zextsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
    }
    float scale() const { return s; }
    template <bool MASKED>
    void next(uint64_t m, __m512bh& a, __m512bh& b) {
        const uint8_t* q = base + (p >> 1);
        __m256i packed = _mm256_loadu_si256((const __m256i*)q);
        if (MASKED) {  // 64 codes from code p: the 32 bytes from q, half a byte on when p is odd
            __m256i next8 = _mm256_loadu_si256((const __m256i*)(q + 8));
            packed = _mm256_shrdv_epi64(packed, next8, _mm256_set1_epi64x((p & 1) * 4));
            p += __builtin_popcountll(m);
        } else {
            p += 64;
        }
        // byte j (c[2j+1] << 4 | c[2j]) -> word j (c[2j+1] << 8 | c[2j]): a code a byte, in order
        __m512i words = _mm512_cvtepu8_epi16(packed);
        __m512i codes = _mm512_ternarylogic_epi32(words, _mm512_slli_epi16(words, 4), _mm512_set1_epi16(0x0f0f),
                                                  0xa8);  // (A | B) & C
        // word j of the placed codes: the even column's code in its low byte (vpermw reads bits
        // 0-4 of an index: the code), the odd column's in its high byte; columns without a value
        // get index 16, the table's zero upper half
        if (MASKED) codes = _mm512_mask_expand_epi8(_mm512_set1_epi8(16), m, codes);
        a = as_bh(_mm512_permutexvar_epi16(codes, table));
        b = as_bh(_mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 8), table));
    }
};

// The activations re-laid out step by step: per 64 columns, every token's 64 in turn. With the
// tokens' rows cols_pad apart, 16 tokens' loads of one step fall in one L1 set (4096 columns are
// 8 KiB): 16 tokens on a 4096 x 4096 layer took 5.6 ms at 50% bfloat16 and 5.4 ms at 50% +
// 4-bit that way, 3.6 and 2.7 ms so. PAIRED: each token's 64 in the 4-bit lookups' order, the
// 32 even columns then the 32 odd ones.
template <bool PAIRED>
void lay_out(const uint16_t* xb, int tokens, int64_t cp, uint16_t* xq) {
    alignas(64) static const uint16_t first[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                                   32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
    const __m512i ia = _mm512_load_si512((const void*)first), ib = _mm512_add_epi16(ia, _mm512_set1_epi16(1));
    for (int64_t c = 0; c < cp; c += 64)
        for (int t = 0; t < tokens; ++t, xq += 64) {
            __m512i x0 = _mm512_loadu_si512((const void*)(xb + t * cp + c));
            __m512i x1 = _mm512_loadu_si512((const void*)(xb + t * cp + c + 32));
            if (PAIRED) {
                __m512i even = _mm512_permutex2var_epi16(x0, ia, x1);
                x1 = _mm512_permutex2var_epi16(x0, ib, x1);
                x0 = even;
            }
            _mm512_store_si512((void*)xq, x0);
            _mm512_store_si512((void*)(xq + 32), x1);
        }
}

// RB rows and NT tokens at once: one pass over the rows' weights serves every token, and each
// activation load serves RB rows. P independent sums per row and token when they are few (a
// vdpbf16ps waits on the previous one into the same sum). A scaled source sums a group into
// `part` and adds part * scale to `acc` at the group's end.
template <int NT, int RB, bool MASKED, class Source>
void block(const PnlWeight* w, const uint16_t* x, float* y, int64_t r) {
    constexpr int P = NT * RB <= 4 ? 2 : 1;
    const int64_t cp = w->cols_pad, words = cp / 64, R = w->rows;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;  // a multiple of 64 (pnl_avx512bf16_reads)
    Source src[RB];
    __m512 part[RB][NT][P], acc[RB][NT];
    const uint64_t* mrow[RB];
    for (int i = 0; i < RB; ++i) {
        src[i].row(w, r + i);
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
        for (int t = 0; t < NT; ++t) {
            acc[i][t] = _mm512_setzero_ps();
            for (int k = 0; k < P; ++k) part[i][t][k] = _mm512_setzero_ps();
        }
    }
    auto fold = [&]() {  // acc += the group's sum times its scale
        for (int i = 0; i < RB; ++i) {
            const __m512 s = _mm512_set1_ps(src[i].scale());
            for (int t = 0; t < NT; ++t) {
                __m512 sum = part[i][t][0];
                for (int k = 1; k < P; ++k) sum = _mm512_add_ps(sum, part[i][t][k]);
                acc[i][t] = _mm512_fmadd_ps(sum, s, acc[i][t]);
                for (int k = 0; k < P; ++k) part[i][t][k] = _mm512_setzero_ps();
            }
        }
    };
    int64_t next_group = 0, g = 0;
    for (int64_t word = 0; word < words; ++word) {
        const int64_t c = word * 64;
        if (grouped && c == next_group) {
            if (Source::kScaled && c > 0) fold();
            for (int i = 0; i < RB; ++i) src[i].group(w, r + i, g < w->groups ? g : w->groups - 1);
            ++g;
            next_group += gs;
        }
        __m512bh a[RB], b[RB];
        for (int i = 0; i < RB; ++i) src[i].template next<MASKED>(MASKED ? mrow[i][word] : ~(uint64_t)0, a[i], b[i]);
        for (int t = 0; t < NT; ++t) {
            const __m512bh xa = as_bh(_mm512_load_si512((const void*)(x + (word * NT + t) * 64)));
            const __m512bh xb = as_bh(_mm512_load_si512((const void*)(x + (word * NT + t) * 64 + 32)));
            for (int i = 0; i < RB; ++i) {
                part[i][t][0] = _mm512_dpbf16_ps(part[i][t][0], a[i], xa);
                part[i][t][P - 1] = _mm512_dpbf16_ps(part[i][t][P - 1], b[i], xb);
            }
        }
    }
    if (Source::kScaled) fold();
    for (int i = 0; i < RB; ++i)
        for (int t = 0; t < NT; ++t) {
            __m512 sum = acc[i][t];
            if (!Source::kScaled)
                for (int k = 0; k < P; ++k) sum = _mm512_add_ps(sum, part[i][t][k]);
            y[t * R + r + i] = _mm512_reduce_add_ps(sum);
        }
}

template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    // rows a block: each activation load serves RB rows, while the sums fit the registers
    constexpr int RB = NT == 1 ? 4 : NT <= 3 || (NT <= 8 && !Source::kScaled) ? 2 : 1;
    uint16_t* x = (uint16_t*)scratch;
    lay_out<Source::kPermuted>(xb, NT, w->cols_pad, x);
    int64_t r = r0;
    for (; r + RB <= r1; r += RB) block<NT, RB, MASKED, Source>(w, x, y, r);
    for (; r < r1; ++r) block<NT, 1, MASKED, Source>(w, x, y, r);
}

template <int NT>
void dispatch_kind(const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    const bool masked = w->has_mask != 0;
    if (w->value_kind == PNL_BF16)
        return masked ? rows<NT, true, BF16Values>(w, xb, y, r0, r1, s) : rows<NT, false, BF16Values>(w, xb, y, r0, r1, s);
    if (w->weight_dtype == PNL_BF16)
        return masked ? rows<NT, true, Code4Values<true>>(w, xb, y, r0, r1, s)
                      : rows<NT, false, Code4Values<true>>(w, xb, y, r0, r1, s);
    return masked ? rows<NT, true, Code4Values<false>>(w, xb, y, r0, r1, s)
                  : rows<NT, false, Code4Values<false>>(w, xb, y, r0, r1, s);
}

template <int NT>
void dispatch_tokens(int tokens, const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1,
                     uint8_t* s) {
    if constexpr (NT > 16) {
        (void)tokens; (void)w; (void)xb; (void)y; (void)r0; (void)r1; (void)s;
    } else {
        if (tokens == NT) return dispatch_kind<NT>(w, xb, y, r0, r1, s);
        dispatch_tokens<NT + 1>(tokens, w, xb, y, r0, r1, s);
    }
}

}  // namespace

extern "C" int pnl_avx512bf16_reads(const PnlWeight* w) {
    if (w->value_kind == PNL_BF16) return 1;
    if (w->value_kind != PNL_CODES || w->code_bits != 4) return 0;
    if (w->weight_dtype != PNL_BF16 && w->weight_dtype != PNL_F32) return 0;
    return w->groups == 1 || w->group_size % 64 == 0;
}

extern "C" void pnl_rows_avx512bf16(const PnlWeight* w, const uint16_t* xb, int tokens, float* y,
                                    int64_t row_begin, int64_t row_end, uint8_t* scratch) {
    dispatch_tokens<1>(tokens, w, xb, y, row_begin, row_end, scratch);
}

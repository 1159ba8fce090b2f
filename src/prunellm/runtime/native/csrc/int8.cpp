// The int8 kernel (AVX-512 with VNNI): y = dequantized int8 activations @ W^T for 4- and 8-bit
// codes, masked or dense, 64 columns a step.
//
// A step hands 64 unsigned bytes, the codes of the row's 64 columns in column order: 4-bit codes
// spread from their nibbles and (masked) placed by one vpexpandb; a column without a value gets
// the group's zero point, so that its code - zero is 0. vpdpbusd multiplies them by the step's
// int8 activations (PnlQuantX) and sums each 4 into 16 int32 lanes: exact, with no table and no
// float conversion of the weights (the bfloat16 kernel's two vpermw a step, avx512bf16.cpp). The
// int32 sums are carried over a segment (the steps sharing both the activations' block scale and
// the weights' group), then converted and added to float32 sums times scale * block scale. The
// zero point's share, zero * the sum of the activations over the group, is one scalar per row,
// token and group, from a per-call table of the activations' sums (pnl_int8_scratch_bytes):
//
//     y = sum_g scale_g * (sum_{segments in g} xscale * sum_j code_j * q_j - zero_g * gsum_g)
//
// Other weights, and every weight on CPUs without VNNI, take pnl_rows_int8_portable (api.cpp).
#include <immintrin.h>
#include <stdint.h>

#include <type_traits>

#include "kernels.h"

#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

// As bf16_sources.inc, for the same short streams: without it a 4096 x 4096 layer at 50% + 4-bit
// took 1.5x as long from DRAM on the Xeon of bench/README.md.
constexpr int kPrefetchBytes = 16384;

inline void prefetch(const void* p, int64_t ahead) { _mm_prefetch((const char*)p + ahead, _MM_HINT_T1); }

// The mask word straight into a mask register (a load; see bf16_sources.inc's mask_whole).
inline __mmask64 mask_whole(const uint64_t* word) {
    __mmask64 k;
    asm("kmovq %1, %0" : "=k"(k) : "m"(*word));
    return k;
}

// 4-bit codes, the first of a byte in its low nibble. EVEN: every masked step holds an even
// number of codes (PnlWeight.even_steps), so a step starts on a byte.
template <bool EVEN>
struct Codes4 {
    const uint8_t* base;
    int64_t p;  // the next code's index
    void row(const PnlWeight* w, int64_t r) {
        base = (const uint8_t*)w->values;
        p = w->row_start[r];
    }
    template <bool MASKED>
    __m512i next(const uint64_t* mword, __m512i fill) {
        const uint8_t* q = base + (p >> 1);
        prefetch(q, kPrefetchBytes / 2);
        if (MASKED) prefetch(mword, kPrefetchBytes / 4);
        __m256i packed = _mm256_loadu_si256((const __m256i*)q);
        if (MASKED && !EVEN) {  // 64 codes from code p: half a byte on when p is odd
            const __m256i next8 = _mm256_loadu_si256((const __m256i*)(q + 8));
            packed = _mm256_shrdv_epi64(packed, next8, _mm256_set1_epi64x((p & 1) * 4));
        }
        p += MASKED ? __builtin_popcountll(*mword) : 64;
        // byte j (c[2j+1] << 4 | c[2j]) -> bytes 2j and 2j+1: a code a byte, in column order
        const __m512i words = _mm512_cvtepu8_epi16(packed);
        const __m512i codes = _mm512_ternarylogic_epi32(words, _mm512_slli_epi16(words, 4), _mm512_set1_epi16(0x0f0f),
                                                        0xa8);  // (A | B) & C
        return MASKED ? _mm512_mask_expand_epi8(fill, mask_whole(mword), codes) : codes;
    }
};

struct Codes8 {  // 8-bit codes, a byte each
    const uint8_t* p;
    void row(const PnlWeight* w, int64_t r) { p = (const uint8_t*)w->values + w->row_start[r]; }
    template <bool MASKED>
    __m512i next(const uint64_t* mword, __m512i fill) {
        prefetch(p, kPrefetchBytes);
        if (MASKED) prefetch(mword, kPrefetchBytes / 4);
        const __m512i codes = _mm512_loadu_si512((const void*)p);
        p += MASKED ? __builtin_popcountll(*mword) : 64;
        return MASKED ? _mm512_mask_expand_epi8(fill, mask_whole(mword), codes) : codes;
    }
};

// RB rows and NT tokens (t0 on) at once, NT <= 8: the int32 sums are carried over a segment's
// steps, which takes two registers per row and token (acc and carried).
template <int NT, int RB, bool MASKED, class Source>
void block(const PnlWeight* w, const PnlQuantX* x, const float* gsum, float* y, int64_t r, int t0) {
    static_assert(NT <= 8, "16 tokens' carried sums would not fit the registers: two passes (rows_in_two)");
    const int64_t words = w->cols_pad / 64, R = w->rows, G = w->groups, T = x->tokens;
    const int64_t gs = G == 1 ? w->cols_pad : w->group_size;  // a multiple of 64 (pnl_int8_reads)
    const int64_t group_steps = gs / 64;
    Source src[RB];
    const uint64_t* mrow[RB];
    __m512 acc[RB][NT], vscale[RB];
    __m512i carried[RB][NT], fill[RB];
    float corr[RB][NT];
    for (int i = 0; i < RB; ++i) {
        src[i].row(w, r + i);
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
        for (int t = 0; t < NT; ++t) {
            acc[i][t] = _mm512_setzero_ps();
            carried[i][t] = _mm512_setzero_si512();
            corr[i][t] = 0.0f;
        }
    }
    int64_t g = -1, group_left = 0;
    for (int64_t word = 0; word < words; ++word) {
        if (group_left == 0) {  // a new group: its scale, zero point and the zero point's share
            ++g;
            group_left = group_steps;
            const int64_t gi = g < G ? g : G - 1;
            for (int i = 0; i < RB; ++i) {
                const float s = w->scales[(r + i) * G + gi], z = w->zeros[(r + i) * G + gi];
                vscale[i] = _mm512_set1_ps(s);
                fill[i] = _mm512_set1_epi8((char)(int)z);
                for (int t = 0; t < NT; ++t) corr[i][t] += s * z * gsum[(t0 + t) * G + gi];
            }
        }
        --group_left;
        // the segment ends with the activations' block (PNL_INT8_BLOCK = 2 steps), the group or the row
        const bool ends = (word & 1) || group_left == 0 || word + 1 == words;
        __m512i codes[RB];
        for (int i = 0; i < RB; ++i) codes[i] = src[i].template next<MASKED>(MASKED ? mrow[i] + word : nullptr, fill[i]);
        for (int t = 0; t < NT; ++t) {
            const __m512i xv = _mm512_load_si512((const void*)(x->q + (word * T + t0 + t) * 64));
            for (int i = 0; i < RB; ++i) carried[i][t] = _mm512_dpbusd_epi32(carried[i][t], codes[i], xv);
            if (ends) {
                const __m512 xs = _mm512_set1_ps(x->scale[(t0 + t) * words + word]);
                for (int i = 0; i < RB; ++i) {
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(carried[i][t]), _mm512_mul_ps(vscale[i], xs),
                                                acc[i][t]);
                    carried[i][t] = _mm512_setzero_si512();
                }
            }
        }
    }
    for (int i = 0; i < RB; ++i)
        for (int t = 0; t < NT; ++t) y[(t0 + t) * R + r + i] = _mm512_reduce_add_ps(acc[i][t]) - corr[i][t];
}

// gsum (T, G): per token and group, the sum over the group's steps of scale * sum(q).
float* group_sums(const PnlWeight* w, const PnlQuantX* x, uint8_t* scratch) {
    const int64_t G = w->groups, words = w->cols_pad / 64, gs = G == 1 ? w->cols_pad : w->group_size;
    float* gsum = (float*)scratch;
    for (int t = 0; t < x->tokens; ++t)
        for (int64_t g = 0; g < G; ++g) {
            float total = 0.0f;
            const int64_t end = g == G - 1 ? words : (g + 1) * gs / 64;  // the last group takes any rest
            for (int64_t word = g * gs / 64; word < end && word < words; ++word)
                total += x->sum[t * words + word];
            gsum[t * G + g] = total;
        }
    return gsum;
}

template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    constexpr int RB = NT == 1 ? 4 : NT <= 4 ? 2 : 1;
    const float* gsum = group_sums(w, x, scratch);
    int64_t r = r0;
    for (; r + RB <= r1; r += RB) block<NT, RB, MASKED, Source>(w, x, gsum, y, r, 0);
    for (; r < r1; ++r) block<NT, 1, MASKED, Source>(w, x, gsum, y, r, 0);
}

// 9 to 16 tokens: each row in two passes of NT1 and NT2 tokens, the second reading the row's
// codes again from L1 (converting 16 tokens' sums every step instead took twice as long).
template <int NT1, int NT2, bool MASKED, class Source>
void rows_in_two(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    const float* gsum = group_sums(w, x, scratch);
    for (int64_t r = r0; r < r1; ++r) {
        block<NT1, 1, MASKED, Source>(w, x, gsum, y, r, 0);
        block<NT2, 1, MASKED, Source>(w, x, gsum, y, r, NT1);
    }
}

// The kind of weight as a source and whether it is masked: visit gets null pointers of the
// source's type and of std::bool_constant<MASKED>.
template <class Visit>
void with_source(const PnlWeight* w, Visit visit) {
    if (w->code_bits == 8) {
        if (w->has_mask) return visit((Codes8*)nullptr, (std::true_type*)nullptr);
        return visit((Codes8*)nullptr, (std::false_type*)nullptr);
    }
    if (!w->has_mask) return visit((Codes4<true>*)nullptr, (std::false_type*)nullptr);
    if (w->even_steps) return visit((Codes4<true>*)nullptr, (std::true_type*)nullptr);
    visit((Codes4<false>*)nullptr, (std::true_type*)nullptr);
}

template <int T>
void dispatch_tokens(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    if constexpr (T > 16) {
        (void)w; (void)x; (void)y; (void)r0; (void)r1; (void)s;
    } else {
        if (x->tokens != T) return dispatch_tokens<T + 1>(w, x, y, r0, r1, s);
        with_source(w, [&](auto* source, auto* masked) {
            using Source = std::remove_pointer_t<decltype(source)>;
            constexpr bool MASKED = std::remove_pointer_t<decltype(masked)>::value;
            if constexpr (T <= 8) rows<T, MASKED, Source>(w, x, y, r0, r1, s);
            else rows_in_two<T - T / 2, T / 2, MASKED, Source>(w, x, y, r0, r1, s);
        });
    }
}

}  // namespace

extern "C" void pnl_rows_int8_avx512vnni(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin,
                                         int64_t row_end, uint8_t* scratch) {
    dispatch_tokens<1>(w, x, y, row_begin, row_end, scratch);
}

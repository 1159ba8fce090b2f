// The int8 kernel (AVX-512 with VNNI): y = dequantized int8 activations @ W^T for 4- and 8-bit
// codes, masked or dense, 64 columns a step.
//
// A step hands 64 unsigned bytes, the codes of the row's 64 columns in column order: 4-bit codes
// spread from their nibbles and (masked) placed by one vpexpandb; a column without a value gets
// the group's zero point, so that its code - zero is 0. vpdpbusd multiplies them by the step's
// int8 activations (PnlQuantX) and sums each 4 into 16 int32 lanes: exact, with no table and no
// float conversion of the weights (the bfloat16 kernel's two vpermw a step, avx512bf16.cpp). The
// int32 sums are carried over a segment (the steps sharing both the activations' block scale and
// the weights' group: the block's 2 steps, or 1 where groups are an odd number of steps), then
// converted and added to float32 sums times scale * block scale. The zero point's share, zero *
// the sum of the activations over the group, is one scalar per row and token from a per-call
// table of the activations' sums (pnl_int8_scratch_bytes):
//
//     y = sum_g scale_g * (sum_{segments in g} xscale * sum_j code_j * q_j - zero_g * gsum_g)
//
// What a segment needs besides its codes (the zero point as a fill, scale * block scale) comes
// from tables made once per row with vector operations (row_tables): made in the loop, their
// broadcasts took two shuffle-port uops a row and group, the port vpexpandb already fills, and
// the zero point's scalar sums a serial chain a row long.
//
// Other weights, and every weight on CPUs without VNNI, take pnl_rows_int8_portable (api.cpp).
#include <immintrin.h>
#include <stdint.h>

#include <type_traits>

#include "kernels.h"

#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

// Without it a 4096 x 4096 layer at 50% + 4-bit took 1.5x as long from DRAM on the Xeon of
// bench/README.md.
#include "prefetch.inc"

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
    int64_t q_ahead, m_ahead;
    void row(const PnlWeight* w, int64_t r, int in_flight) {
        base = (const uint8_t*)w->values;
        p = w->row_start[r];
        q_ahead = values_ahead(w, r, in_flight, kPrefetchBytes / 2);
        m_ahead = mask_ahead(w, in_flight);
    }
    void prefetch_ahead(const uint64_t* mword) {  // once per segment: 2 steps read at most 64 bytes of codes
        prefetch(base + (p >> 1), q_ahead);
        if (mword) prefetch(mword, m_ahead);
    }
    template <bool MASKED>
    __m512i next(const uint64_t* mword, __m512i fill) {
        const uint8_t* q = base + (p >> 1);
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
    int64_t p_ahead, m_ahead;
    void row(const PnlWeight* w, int64_t r, int in_flight) {
        p = (const uint8_t*)w->values + w->row_start[r];
        p_ahead = values_ahead(w, r, in_flight, kPrefetchBytes);
        m_ahead = mask_ahead(w, in_flight);
    }
    void prefetch_ahead(const uint64_t* mword) {  // 2 steps read at most 128 bytes
        prefetch(p, p_ahead);
        prefetch(p + 64, p_ahead);
        if (mword) prefetch(mword, m_ahead);
    }
    template <bool MASKED>
    __m512i next(const uint64_t* mword, __m512i fill) {
        const __m512i codes = _mm512_loadu_si512((const void*)p);
        p += MASKED ? __builtin_popcountll(*mword) : 64;
        return MASKED ? _mm512_mask_expand_epi8(fill, mask_whole(mword), codes) : codes;
    }
};

// Row r's tables for its segments u (SEG steps each): fills[u], the zero point of the segment's
// group as four bytes (a broadcast load); factors[t * segments + u], scale * the segment's
// activation scale; and corr[t], the zero point's share, sum over groups of scale * zero * gsum.
template <int NT, int SEG>
void row_tables(const PnlWeight* w, const PnlQuantX* x, const float* gsum, int64_t r, float* corr,
                float* factors, uint32_t* fills) {
    const int64_t words = w->cols_pad / 64, G = w->groups, segments = (words + SEG - 1) / SEG;
    const int64_t gs = G == 1 ? w->cols_pad : w->group_size;
    const float* s = w->scales + r * G;
    const uint8_t* z = w->zeros + r * G;
    __m512 c[NT];
    for (int t = 0; t < NT; ++t) c[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g += 16) {
        const __mmask16 k = G - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (G - g)) - 1);
        const __m512 zf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, z + g)));
        const __m512 sz = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + g), zf);
        for (int t = 0; t < NT; ++t) c[t] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(k, gsum + t * G + g), c[t]);
    }
    for (int t = 0; t < NT; ++t) corr[t] = _mm512_reduce_add_ps(c[t]);
    int64_t u = 0;
    if (SEG == 2 && gs == 128) {  // segment u's group is u, up to the last group (which takes any rest)
        const int64_t direct = segments < G ? segments : G;
        const __m512i four = _mm512_set1_epi32(0x01010101);
        const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (; u < direct; u += 16) {
            const __mmask16 k = direct - u >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (direct - u)) - 1);
            const __m512i zi = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, z + u));
            _mm512_mask_storeu_epi32(fills + u, k, _mm512_mullo_epi32(zi, four));
            const __m512 sv = _mm512_maskz_loadu_ps(k, s + u);
            // each segment's first step's activation scale: the even ones of the steps' scales
            // from 2u on, two loads and a vpermt2ps (a gather of them was a fifth of a 16-token
            // call's time on Zen 5)
            const int64_t left = words - 2 * u;  // steps from 2u on: every segment's first among them
            const __mmask16 k0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const __mmask16 k1 = left >= 32 ? (__mmask16)0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            for (int t = 0; t < NT; ++t) {
                const float* xs = x->scale + t * words + 2 * u;
                const __m512 xv = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k0, xs), evens,
                                                         _mm512_maskz_loadu_ps(k1, xs + 16));
                _mm512_mask_storeu_ps(factors + t * segments + u, k, _mm512_mul_ps(sv, xv));
            }
        }
        u = direct;
    }
    for (; u < segments; ++u) {
        const int64_t g = u * SEG * 64 / gs < G ? u * SEG * 64 / gs : G - 1;
        fills[u] = (uint32_t)z[g] * 0x01010101u;
        for (int t = 0; t < NT; ++t) factors[t * segments + u] = s[g] * x->scale[t * words + u * SEG];
    }
}

// Segment u (`steps` steps) of RB rows for NT tokens (t0 on): the rows' codes against the
// tokens' int8 activations, int32 sums carried over the segment (two registers per row and token:
// acc and carried), then converted and added to acc times the segment's factor. factors: (RB,
// NT, segments) from the rows' tables, fills: (RB, segments).
template <int NT, int RB, int SEG, bool MASKED, class Source>
__attribute__((always_inline)) inline void segment(const PnlQuantX* x, int t0, int64_t u, int steps, int64_t segments,
                                                   Source (&src)[RB], const uint64_t* const (&mrow)[RB],
                                                   __m512 (&acc)[RB][NT], const float* factors, const uint32_t* fills) {
    const int64_t T = x->tokens;
    __m512i fill[RB], carried[RB][NT];
    for (int i = 0; i < RB; ++i) {
        src[i].prefetch_ahead(MASKED ? mrow[i] + u * SEG : nullptr);
        fill[i] = _mm512_set1_epi32((int)fills[i * segments + u]);
        for (int t = 0; t < NT; ++t) carried[i][t] = _mm512_setzero_si512();
    }
    for (int k = 0; k < steps; ++k) {
        const int64_t word = u * SEG + k;
        __m512i codes[RB];
        for (int i = 0; i < RB; ++i) codes[i] = src[i].template next<MASKED>(MASKED ? mrow[i] + word : nullptr, fill[i]);
        for (int t = 0; t < NT; ++t) {
            const __m512i xv = _mm512_load_si512((const void*)(x->q + (word * T + t0 + t) * 64));
            for (int i = 0; i < RB; ++i) carried[i][t] = _mm512_dpbusd_epi32(carried[i][t], codes[i], xv);
        }
    }
    for (int i = 0; i < RB; ++i)
        for (int t = 0; t < NT; ++t)
            acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(carried[i][t]),
                                        _mm512_set1_ps(factors[(i * NT + t) * segments + u]), acc[i][t]);
}

// RB rows and NT tokens at once, NT <= 8, in segments of SEG steps (2: groups of a multiple of
// 128 columns, a whole number of the activations' blocks; 1: the other groups); tables: RB * (NT
// + 1) * segments floats of scratch (row_tables).
template <int NT, int RB, int SEG, bool MASKED, class Source>
void block(const PnlWeight* w, const PnlQuantX* x, const float* gsum, float* y, int64_t r, float* tables) {
    static_assert(NT <= 8, "16 tokens' carried sums would not fit the registers: two lanes (panels)");
    const int64_t words = w->cols_pad / 64, R = w->rows;
    const int64_t whole = words / SEG, segments = (words + SEG - 1) / SEG;
    float* factors = tables;                                      // (RB, NT, segments)
    uint32_t* fills = (uint32_t*)(tables + RB * NT * segments);  // (RB, segments)
    // the scales and zero points of the rows two blocks on: read at a block's start, before its
    // first step, a miss there stalls the whole block
    const int64_t G = w->groups;
    if (r + 3 * RB <= R) {
        for (int64_t at = 0; at < RB * G; at += 16) {
            prefetch(w->scales + (r + 2 * RB) * G + at, 0);
            prefetch(w->zeros + (r + 2 * RB) * G + at, 0);
        }
    }
    float corr[RB][NT];
    for (int i = 0; i < RB; ++i)
        row_tables<NT, SEG>(w, x, gsum, r + i, corr[i], factors + i * NT * segments, fills + i * segments);
    Source src[RB];
    const uint64_t* mrow[RB];
    __m512 acc[RB][NT];
    for (int i = 0; i < RB; ++i) {
        src[i].row(w, r + i, RB);
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
        for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
    }
    for (int64_t u = 0; u < whole; ++u)
        segment<NT, RB, SEG, MASKED, Source>(x, 0, u, SEG, segments, src, mrow, acc, factors, fills);
    if (whole < segments)  // an odd number of steps: the last block has one
        segment<NT, RB, SEG, MASKED, Source>(x, 0, whole, 1, segments, src, mrow, acc, factors, fills);
    for (int i = 0; i < RB; ++i)
        for (int t = 0; t < NT; ++t) y[t * R + r + i] = _mm512_reduce_add_ps(acc[i][t]) - corr[i][t];
}

template <int NT, int SEG, bool MASKED, class Source>
void rows_of(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    constexpr int RB = NT == 1 ? 4 : NT <= 4 ? 2 : 1;  // RB * NT <= 8: the tables' size
    const float* gsum = pnl_int8_group_sums(w, x, scratch);
    float* tables = (float*)pnl_int8_tables_in(w, x->tokens, scratch);
    int64_t r = r0;
    for (; r + RB <= r1; r += RB) block<NT, RB, SEG, MASKED, Source>(w, x, gsum, y, r, tables);
    for (; r < r1; ++r) block<NT, 1, SEG, MASKED, Source>(w, x, gsum, y, r, tables);
}

// A row's state for NT of a call's tokens (t0 on) between panels: its codes' position and its
// float32 sums.
template <int NT, class Source>
struct Lane {
    Source src[1];
    const uint64_t* mrow[1];
    __m512 acc[1][NT];

    void start(const PnlWeight* w, int64_t r) {
        src[0].row(w, r, PNL_INT8_PANEL_ROWS);  // a chunk of panels' rows side by side
        mrow[0] = w->has_mask ? w->mask + r * (w->cols_pad / 64) : nullptr;
        for (int t = 0; t < NT; ++t) acc[0][t] = _mm512_setzero_ps();
    }
};

// 9 to 16 tokens. A token's carried and float sums take two registers, so a row walks its codes
// twice, for NT1 and then NT2 tokens (two lanes; the second reads the codes from L1: converting
// 16 tokens' sums every step instead took twice as long). Laid out, 16 tokens' activations of
// 4096 columns are 64 KiB, more than L1: a walk over whole rows read them again from L2 for each
// row, and 16 tokens took 2.3-2.9 times as long as 8 on Zen 5 (for twice the arithmetic). So,
// as the bfloat16 kernel does, PNL_INT8_PANEL_ROWS rows walk the columns a panel (about
// kPanelBytes of activations) at a time, each row's lanes kept in memory between panels
// (bench/README.md, "Per-layer CPU kernels").
constexpr int64_t kPanelBytes = 16384;

// Segments [u0, u1) of a lane (the last of an odd number of steps has one).
template <int NT, int SEG, bool MASKED, class Source>
inline void walk(const PnlQuantX* x, int t0, int64_t u0, int64_t u1, int64_t whole, int64_t segments,
                 Lane<NT, Source>& lane, const float* factors, const uint32_t* fills) {
    const int64_t end = u1 < whole ? u1 : whole;
    for (int64_t u = u0; u < end; ++u)
        segment<NT, 1, SEG, MASKED, Source>(x, t0, u, SEG, segments, lane.src, lane.mrow, lane.acc, factors, fills);
    if (u1 > whole)
        segment<NT, 1, SEG, MASKED, Source>(x, t0, whole, 1, segments, lane.src, lane.mrow, lane.acc, factors, fills);
}

template <int NT1, int NT2, int SEG, bool MASKED, class Source>
void panels(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    constexpr int NT = NT1 + NT2, rows = PNL_INT8_PANEL_ROWS;
    const int64_t words = w->cols_pad / 64, R = w->rows;
    const int64_t whole = words / SEG, segments = (words + SEG - 1) / SEG;
    const int64_t per = kPanelBytes / (NT * 64 * SEG) > 0 ? kPanelBytes / (NT * 64 * SEG) : 1;  // segments a panel
    const float* gsum = pnl_int8_group_sums(w, x, scratch);
    float* factors = (float*)pnl_int8_tables_in(w, x->tokens, scratch);  // (rows, NT, segments)
    uint32_t* fills = (uint32_t*)(factors + rows * NT * segments);        // (rows, segments)
    Lane<NT1, Source> first[rows];
    Lane<NT2, Source> second[rows];
    float corr[rows][NT];
    for (int64_t r = r0; r < r1; r += rows) {
        const int n = (int)(r1 - r < rows ? r1 - r : rows);
        for (int i = 0; i < n; ++i) {
            row_tables<NT, SEG>(w, x, gsum, r + i, corr[i], factors + i * NT * segments, fills + i * segments);
            first[i].start(w, r + i);
            second[i].start(w, r + i);
        }
        for (int64_t u0 = 0; u0 < segments; u0 += per) {
            const int64_t u1 = u0 + per < segments ? u0 + per : segments;
            for (int i = 0; i < n; ++i) {
                const float* f = factors + i * NT * segments;
                walk<NT1, SEG, MASKED>(x, 0, u0, u1, whole, segments, first[i], f, fills + i * segments);
                walk<NT2, SEG, MASKED>(x, NT1, u0, u1, whole, segments, second[i], f + NT1 * segments,
                                       fills + i * segments);
            }
        }
        for (int i = 0; i < n; ++i) {
            for (int t = 0; t < NT1; ++t) y[t * R + r + i] = _mm512_reduce_add_ps(first[i].acc[0][t]) - corr[i][t];
            for (int t = 0; t < NT2; ++t)
                y[(NT1 + t) * R + r + i] = _mm512_reduce_add_ps(second[i].acc[0][t]) - corr[i][NT1 + t];
        }
    }
}

template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    const int64_t gs = w->groups == 1 ? w->cols_pad : w->group_size;  // a multiple of 64 (pnl_int8_reads)
    if (gs % 128 == 0) {
        if constexpr (NT <= 8) rows_of<NT, 2, MASKED, Source>(w, x, y, r0, r1, scratch);
        else panels<NT - NT / 2, NT / 2, 2, MASKED, Source>(w, x, y, r0, r1, scratch);
    } else {
        if constexpr (NT <= 8) rows_of<NT, 1, MASKED, Source>(w, x, y, r0, r1, scratch);
        else panels<NT - NT / 2, NT / 2, 1, MASKED, Source>(w, x, y, r0, r1, scratch);
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
            rows<T, MASKED, Source>(w, x, y, r0, r1, s);
        });
    }
}

}  // namespace

extern "C" void pnl_rows_int8_avx512vnni(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin,
                                         int64_t row_end, uint8_t* scratch) {
    dispatch_tokens<1>(w, x, y, row_begin, row_end, scratch);
}

// pnl_quantize_x 16 columns at a time (a call rounds every activation of the pass on one thread
// before any product: scalar, it was a visible share of a small layer's call): the same float32
// operations, so the same bits. Columns past `cols` are zero.
extern "C" PnlQuantX pnl_quantize_x_avx512(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                                           uint8_t* buffer) {
    const PnlQuantX out = pnl_quantx_in(cols_pad, tokens, buffer);
    const int64_t steps = out.steps;
    int8_t* q = (int8_t*)buffer;
    const __m512 top = _mm512_set1_ps(127.0f), bottom = _mm512_set1_ps(-127.0f);
    for (int t = 0; t < tokens; ++t) {
        const float* xf = (const float*)x + t * cols;
        const uint16_t* xh = (const uint16_t*)x + t * cols;
        for (int64_t c0 = 0; c0 < cols_pad; c0 += PNL_INT8_BLOCK) {
            const int vectors = (int)((cols_pad - c0 < PNL_INT8_BLOCK ? cols_pad - c0 : PNL_INT8_BLOCK) / 16);
            __m512 v[PNL_INT8_BLOCK / 16];
            __m512 amax = _mm512_setzero_ps();
            for (int j = 0; j < vectors; ++j) {
                const int64_t col = c0 + 16 * j, left = cols - col;
                const __mmask16 k = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
                v[j] = x_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(
                                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, xh + col)), 16))
                              : _mm512_maskz_loadu_ps(k, xf + col);
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v[j]));
            }
            const float a = _mm512_reduce_max_ps(amax);
            const float s = a > 0.0f ? a / 127.0f : 0.0f, inv = a > 0.0f ? 127.0f / a : 0.0f;
            const __m512 vinv = _mm512_set1_ps(inv);
            for (int j0 = 0; j0 < vectors; j0 += 4) {  // a step: 64 columns
                const int64_t step = (c0 + 16 * j0) / 64;
                int8_t* dst = q + (step * tokens + t) * 64;
                __m512i total = _mm512_setzero_si512();
                for (int j = j0; j < j0 + 4; ++j) {
                    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v[j], vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    r = _mm512_min_ps(_mm512_max_ps(r, bottom), top);
                    const __m512i qi = _mm512_cvtps_epi32(r);
                    total = _mm512_add_epi32(total, qi);
                    _mm_storeu_si128((__m128i*)(dst + 16 * (j - j0)), _mm512_cvtepi32_epi8(qi));
                }
                ((float*)out.scale)[t * steps + step] = s;
                ((float*)out.sum)[t * steps + step] = s * (float)_mm512_reduce_add_epi32(total);
            }
        }
    }
    return out;
}

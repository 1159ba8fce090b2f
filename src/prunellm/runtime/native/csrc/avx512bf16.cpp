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
//   scale * (code - zero) rounded to bfloat16 as decompress_weight makes them. A float32 layer's are
//   code - zero, an integer in [-255, 15] (zero points are uint8), exact in bfloat16, and the
//   group's partial sum is multiplied by its scale once: within float32 rounding of the sum of
//   float32 weights scale * (code - zero). No pass spreads a row's codes first: a masked row's
//   step loads its 64 codes from the byte holding the first and shifts them by half a byte when
//   the first is a high nibble (vpshrdvq), spreads them to a byte each in registers and places
//   them with one vpexpandb; a column without a value gets index 16, the table's zero half.
//   The even columns' codes (each word's low byte) and the odd columns' (high byte) take one
//   vpermw each, so the activations are laid out per step as the 32 even, then the 32 odd;
// - 8-bit codes of bfloat16 and float32 layers, masked or dense: a 256-entry table would not
//   fit a register, so each step computes its 64 weights. A masked step places its codes with
//   one vpexpandb, a column without a value getting the zero point (code - zero = 0 there). One
//   vpshufb per 16 columns drops a code into the low byte of float32 2^23 (the float 2^23 +
//   code), and subtracting 2^23 + zero leaves code - zero, exact: an integer in [-255, 255],
//   8 significant bits, exact in bfloat16 too. A float32 layer's weight words are that integer,
//   its group's sum scaled once as for 4-bit codes; a bfloat16 layer's are it times the scale,
//   rounded to bfloat16 by vcvtne2ps2bf16 (nearest even, as decompress_weight; it reads a
//   float32 below 1e-38 as zero). vpshufb stays within 128-bit lanes, so the activations are
//   laid out per step in the order that leaves (kByLane).
//
// Every call lays the activations out step by step (all tokens' 64 columns of a step together:
// rows of 8 KiB would put 16 tokens' loads in one L1 set). Other weights (float32 or float16
// values, float16 layers' codes, 1- and 2-bit codes, groups that are not a multiple of
// 64) and float32 activations take the AVX-512 float32 kernel (api.cpp decides,
// pnl_avx512bf16_reads).
#include <immintrin.h>
#include <stdint.h>

#include <type_traits>

#include "kernels.h"

// GCC 12 warns inside its own headers (the _mm256_undefined_* operand of a 512-bit register's
// halves, as _mm512_reduce_add_ps takes them) where these templates inline it.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

#include "bf16_sources.inc"

// The activations re-laid out step by step: per 64 columns, every token's 64 in turn. With the
// tokens' rows cols_pad apart, 16 tokens' loads of one step fall in one L1 set (4096 columns are
// 8 KiB): 16 tokens on a 4096 x 4096 layer took 5.6 ms at 50% bfloat16 and 5.4 ms at 50% +
// 4-bit that way, 3.6 and 2.7 ms so. ORDER (unless null): each token's 64 in the order the
// source's weight words come (the 4-bit lookups' even then odd columns, the 8-bit codes' lanes).
template <const Order* ORDER>
void lay_out(const uint16_t* xb, int tokens, int64_t cp, uint16_t* xq) {
    const StepOrder<ORDER> order;
    for (int64_t c = 0; c < cp; c += 64)
        for (int t = 0; t < tokens; ++t, xq += 64) {
            __m512i x0, x1;
            order.load(xb + t * cp + c, x0, x1);
            _mm512_store_si512((void*)xq, x0);
            _mm512_store_si512((void*)(xq + 32), x1);
        }
}

// From this many tokens a call's activations, laid out, outgrow L1 (16 tokens of 4096 columns
// are 128 KiB) and a walk over whole rows reads all of them again from L2 for every row: 16
// tokens took 4-5 times as long as 8 on Zen 5 (bench/README.md, "Per-layer CPU kernels"). So
// kChunk rows walk the columns a panel at a time, each row's sums and source kept in memory
// between panels, the panel's activations (about kPanelBytes) read from L1 by every row of
// the chunk.
constexpr int kPanelTokens = 9;
constexpr int kChunk = 8;
constexpr int64_t kPanelBytes = 16384;

// One step's products: RB rows' 64 weights (a, b) against NT tokens' activations laid out at xs.
template <int NT, int RB, int P>
inline void products(const __m512bh* a, const __m512bh* b, const uint16_t* xs, __m512 (&part)[RB][NT][P]) {
    for (int t = 0; t < NT; ++t) {
        const __m512bh xa = as_bh(_mm512_load_si512((const void*)(xs + t * 64)));
        const __m512bh xb = as_bh(_mm512_load_si512((const void*)(xs + t * 64 + 32)));
        for (int i = 0; i < RB; ++i) {
            part[i][t][0] = _mm512_dpbf16_ps(part[i][t][0], a[i], xa);
            part[i][t][P - 1] = _mm512_dpbf16_ps(part[i][t][P - 1], b[i], xb);
        }
    }
}

// A scaled source's group end: acc += the group's sums times its scale, the sums reset.
template <int NT, int RB, int P, class Source>
inline void fold_group(const Source* src, __m512 (&part)[RB][NT][P], __m512 (&acc)[RB][NT]) {
    for (int i = 0; i < RB; ++i) {
        const __m512 s = _mm512_set1_ps(src[i].scale());
        for (int t = 0; t < NT; ++t) {
            __m512 sum = part[i][t][0];
            for (int k = 1; k < P; ++k) sum = _mm512_add_ps(sum, part[i][t][k]);
            acc[i][t] = _mm512_fmadd_ps(sum, s, acc[i][t]);
            for (int k = 0; k < P; ++k) part[i][t][k] = _mm512_setzero_ps();
        }
    }
}

// The rows' results: each row and token's sums added across their 16 lanes into y (tokens R
// apart); a scaled source's sums are in acc (folded), an unscaled one's in part.
template <int NT, int RB, int P, bool SCALED>
inline void store_sums(const __m512 (&part)[RB][NT][P], const __m512 (&acc)[RB][NT], float* y, int64_t R, int64_t r) {
    for (int i = 0; i < RB; ++i)
        for (int t = 0; t < NT; ++t) {
            __m512 sum = acc[i][t];
            if (!SCALED)
                for (int k = 0; k < P; ++k) sum = _mm512_add_ps(sum, part[i][t][k]);
            y[t * R + r + i] = _mm512_reduce_add_ps(sum);
        }
}

// RB rows and NT tokens at once: one pass over the rows' weights serves every token, and each
// activation load serves RB rows. P independent sums per row and token when they are few (a
// vdpbf16ps waits on the previous one into the same sum). A scaled source sums a group into
// `part` and adds part * scale to `acc` at the group's end.
template <int NT, int RB, bool MASKED, class Source>
void block(const PnlWeight* w, const uint16_t* x, float* y, int64_t r, BlockPrefetch& ahead) {
    constexpr int P = NT * RB <= 4 ? 2 : 1;
    const int64_t cp = w->cols_pad, words = cp / 64, R = w->rows;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;  // a multiple of 64 (pnl_avx512bf16_reads)
    Source src[RB];
    __m512 part[RB][NT][P], acc[RB][NT];
    const uint64_t* mrow[RB];
    for (int i = 0; i < RB; ++i) {
        src[i].row(w, r + i, RB);
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
        for (int t = 0; t < NT; ++t) {
            acc[i][t] = _mm512_setzero_ps();
            for (int k = 0; k < P; ++k) part[i][t][k] = _mm512_setzero_ps();
        }
    }
    auto fold = [&]() { fold_group<NT, RB, P>(src, part, acc); };
    constexpr bool kBlockPrefetch = MASKED && Source::kBlockPrefetch;
    if (kBlockPrefetch) ahead.block(r, RB);
    int64_t next_group = 0, g = 0;
    for (int64_t word = 0; word < words; ++word) {
        if (kBlockPrefetch) ahead.step(word);
        const int64_t c = word * 64;
        if (grouped && c == next_group) {
            if (Source::kScaled && c > 0) fold();
            for (int i = 0; i < RB; ++i) src[i].group(w, r + i, g < w->groups ? g : w->groups - 1);
            ++g;
            next_group += gs;
        }
        __m512bh a[RB], b[RB];
        for (int i = 0; i < RB; ++i)
            src[i].template next<MASKED, !kBlockPrefetch>(MASKED ? mrow[i] + word : nullptr, a[i], b[i]);
        products<NT, RB, P>(a, b, x + word * NT * 64, part);
    }
    if (Source::kScaled) fold();
    store_sums<NT, RB, P, Source::kScaled>(part, acc, y, R, r);
}

// A row's running state in the panels' walk (below): its source's position, its sums (as
// block's), its next group.
template <int NT, int RB, class Source>
struct Sums {
    static constexpr int P = NT * RB <= 4 ? 2 : 1;
    Source src[RB];
    __m512 part[RB][NT][P], acc[RB][NT];
    int64_t next_group, g;

    void start(const PnlWeight* w, int64_t r) {
        next_group = g = 0;
        for (int i = 0; i < RB; ++i) {
            src[i].row(w, r + i, kChunk);
            for (int t = 0; t < NT; ++t) {
                acc[i][t] = _mm512_setzero_ps();
                for (int k = 0; k < P; ++k) part[i][t][k] = _mm512_setzero_ps();
            }
        }
    }
    void fold() { fold_group<NT, RB, P>(src, part, acc); }
    void finish(const PnlWeight* w, float* y, int64_t r) {
        if (Source::kScaled) fold();
        store_sums<NT, RB, P, Source::kScaled>(part, acc, y, w->rows, r);
    }
};

// Steps [word0, word1) of RB rows from r, the activations laid out from word0 on at x. (The
// compiler stores the sums back to `s` every step; a walk on a copy in registers took 1.5 times
// as long on Zen 5, with or without its tokens' products reordered; block's loop, walked this
// way, took 5-8% longer at 8 tokens: it keeps its own.)
template <int NT, int RB, bool MASKED, class Source>
inline void walk(const PnlWeight* w, const uint16_t* x, int64_t r, int64_t word0, int64_t word1,
                 Sums<NT, RB, Source>& s) {
    constexpr int P = Sums<NT, RB, Source>::P;
    const int64_t words = w->cols_pad / 64;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? w->cols_pad : w->group_size;  // a multiple of 64 (pnl_avx512bf16_reads)
    const uint64_t* mrow[RB];
    for (int i = 0; i < RB; ++i) mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
    for (int64_t word = word0; word < word1; ++word) {
        const int64_t c = word * 64;
        if (grouped && c == s.next_group) {
            if (Source::kScaled && c > 0) s.fold();
            for (int i = 0; i < RB; ++i) s.src[i].group(w, r + i, s.g < w->groups ? s.g : w->groups - 1);
            ++s.g;
            s.next_group += gs;
        }
        __m512bh a[RB], b[RB];
        for (int i = 0; i < RB; ++i) s.src[i].template next<MASKED>(MASKED ? mrow[i] + word : nullptr, a[i], b[i]);
        products<NT, RB, P>(a, b, x + (word - word0) * NT * 64, s.part);
    }
}

template <int NT, bool MASKED, class Source>
void panels(const PnlWeight* w, const uint16_t* x, float* y, int64_t r0, int64_t r1) {
    const int64_t words = w->cols_pad / 64;
    const int64_t step = kPanelBytes / (NT * 128) > 0 ? kPanelBytes / (NT * 128) : 1;  // words a panel
    Sums<NT, 1, Source> s[kChunk];
    for (int64_t r = r0; r < r1; r += kChunk) {
        const int n = (int)(r1 - r < kChunk ? r1 - r : kChunk);
        for (int i = 0; i < n; ++i) s[i].start(w, r + i);
        for (int64_t word = 0; word < words; word += step) {
            const int64_t end = word + step < words ? word + step : words;
            for (int i = 0; i < n; ++i) walk<NT, 1, MASKED, Source>(w, x + word * NT * 64, r + i, word, end, s[i]);
        }
        for (int i = 0; i < n; ++i) s[i].finish(w, y, r + i);
    }
}

template <int NT, bool MASKED, class Source>
void rows(const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1, uint8_t* scratch) {
    // rows a block: each activation load serves RB rows, while the sums fit the registers
    constexpr int RB = NT == 1 ? 4 : NT <= 3 || (NT <= 8 && !Source::kScaled) ? 2 : 1;
    uint16_t* x = (uint16_t*)scratch;
    lay_out<Source::kOrder>(xb, NT, w->cols_pad, x);
    if constexpr (NT >= kPanelTokens) {
        panels<NT, MASKED, Source>(w, x, y, r0, r1);
    } else {
        BlockPrefetch ahead(w, r0);
        int64_t r = r0;
        for (; r + RB <= r1; r += RB) block<NT, RB, MASKED, Source>(w, x, y, r, ahead);
        for (; r < r1; ++r) block<NT, 1, MASKED, Source>(w, x, y, r, ahead);
    }
}

template <class Source>
struct EvenSteps {  // the source that reads a masked layer of even steps (4-bit codes)
    using type = Source;
};
template <bool BF16>
struct EvenSteps<Code4Values<BF16>> {
    using type = Code4Values<BF16, true>;
};

template <int NT, class Source>
void by_mask(const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    using Even = typename EvenSteps<Source>::type;
    if (w->has_mask && w->even_steps && !std::is_same_v<Even, Source>) return rows<NT, true, Even>(w, xb, y, r0, r1, s);
    if (w->has_mask) return rows<NT, true, Source>(w, xb, y, r0, r1, s);
    rows<NT, false, Source>(w, xb, y, r0, r1, s);
}

// The source that reads w (the kernel's and the expansion's one choice): visit gets a null
// pointer of its type.
template <class Visit>
void with_source(const PnlWeight* w, Visit visit) {
    if (w->value_kind == PNL_BF16) return visit((BF16Values*)nullptr);
    const bool bf16 = w->weight_dtype == PNL_BF16;
    if (w->code_bits == 8) return bf16 ? visit((Code8Values<true>*)nullptr) : visit((Code8Values<false>*)nullptr);
    return bf16 ? visit((Code4Values<true>*)nullptr) : visit((Code4Values<false>*)nullptr);
}

template <int NT>
void dispatch_kind(const PnlWeight* w, const uint16_t* xb, float* y, int64_t r0, int64_t r1, uint8_t* s) {
    with_source(w, [&](auto* source) {
        by_mask<NT, std::remove_pointer_t<decltype(source)>>(w, xb, y, r0, r1, s);
    });
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

// The expansion (a prefill's dense weight, api.cpp's pnl_expand) from the kernels' own sources:
// each step's 64 weight words put back in column order and stored, a column without a value
// zeroed (+0, as the format's decompression leaves it; a scaled zero could be -0). A bfloat16
// layer's words are its weights; a float32 layer's are code - zero, widened and multiplied by
// the group's scale: the float32 operations decompress_weight does, so the same bits (save a
// bfloat16 layer's weight below 1e-38, which the conversions make zero).
struct ColumnOrder {
    alignas(64) uint16_t word[64];  // the source's word (a's 0-31, b's 32-63) holding column c
};

constexpr ColumnOrder column_order(const Order* order) {
    ColumnOrder o{};
    for (int w = 0; w < 64; ++w) o.word[order ? order->col[w] : w] = (uint16_t)w;
    return o;
}

template <const Order* ORDER>
struct Columns {
    static constexpr ColumnOrder kOrder = column_order(ORDER);
};

inline __mmask32 first_bits32(int64_t n) { return n >= 32 ? ~(__mmask32)0 : n <= 0 ? 0 : ((__mmask32)1 << n) - 1; }
inline __mmask16 first_bits16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

template <bool MASKED, class Source>
void expand_rows(const PnlWeight* w, void* out, int64_t r0, int64_t r1) {
    const int64_t C = w->cols, cp = w->cols_pad, words = cp / 64;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;
    const __m512i ia = _mm512_load_si512((const void*)Columns<Source::kOrder>::kOrder.word);
    const __m512i ib = _mm512_load_si512((const void*)(Columns<Source::kOrder>::kOrder.word + 32));
    for (int64_t r = r0; r < r1; ++r) {
        Source src;
        src.row(w, r, 1);
        const uint64_t* mrow = MASKED ? w->mask + r * words : nullptr;
        int64_t next_group = 0, g = 0;
        for (int64_t word = 0; word < words; ++word) {
            const int64_t c = word * 64, left = C - c;
            if (left <= 0) break;
            if (grouped && c == next_group) {
                src.group(w, r, g < w->groups ? g : w->groups - 1);
                ++g;
                next_group += gs;
            }
            const uint64_t m = MASKED ? mrow[word] : ~(uint64_t)0;
            __m512bh a, b;
            src.template next<MASKED>(MASKED ? mrow + word : nullptr, a, b);
            // columns c..c+31 and c+32..c+63, a column without a value +0
            const __mmask32 k0 = MASKED ? (__mmask32)m : ~(__mmask32)0, k1 = MASKED ? (__mmask32)(m >> 32) : k0;
            __m512i lo = _mm512_maskz_permutex2var_epi16(k0, (__m512i)a, ia, (__m512i)b);
            __m512i hi = _mm512_maskz_permutex2var_epi16(k1, (__m512i)a, ib, (__m512i)b);
            if (!Source::kScaled) {
                uint16_t* dst = (uint16_t*)out + r * C + c;
                _mm512_mask_storeu_epi16(dst, first_bits32(left), lo);
                _mm512_mask_storeu_epi16(dst + 32, first_bits32(left - 32), hi);
                continue;
            }
            // a float32 layer: code - zero (exact in bfloat16) widened, times the scale; the
            // masked-out words stay +0 (their product could be -0)
            float* dst = (float*)out + r * C + c;
            const __m512 s = _mm512_set1_ps(src.scale());
            for (int q = 0; q < 4; ++q) {
                const __m512i half = q < 2 ? lo : hi;
                const __m256i part = q % 2 ? _mm512_extracti64x4_epi64(half, 1) : _mm512_castsi512_si256(half);
                const __m512 d = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(part), 16));
                const __mmask16 k = (__mmask16)((MASKED ? m : ~(uint64_t)0) >> (16 * q));
                _mm512_mask_storeu_ps(dst + 16 * q, first_bits16(left - 16 * q), _mm512_maskz_mul_ps(k, d, s));
            }
        }
    }
}

template <class Source>
void expand_by_mask(const PnlWeight* w, void* out, int64_t r0, int64_t r1) {
    if (w->has_mask) return expand_rows<true, Source>(w, out, r0, r1);
    expand_rows<false, Source>(w, out, r0, r1);
}

}  // namespace

extern "C" int pnl_avx512bf16_reads(const PnlWeight* w) {
    if (w->value_kind == PNL_BF16) return 1;
    if (w->value_kind != PNL_CODES || (w->code_bits != 4 && w->code_bits != 8)) return 0;
    if (w->weight_dtype != PNL_BF16 && w->weight_dtype != PNL_F32) return 0;
    return w->groups == 1 || w->group_size % 64 == 0;
}

extern "C" void pnl_rows_avx512bf16(const PnlWeight* w, const uint16_t* xb, int tokens, float* y,
                                    int64_t row_begin, int64_t row_end, uint8_t* scratch) {
    dispatch_tokens<1>(tokens, w, xb, y, row_begin, row_end, scratch);
}

// Whether pnl_expand_rows_avx512bf16 expands this weight: a bfloat16 layer the kernel reads, or
// a float32 layer's 4- or 8-bit codes.
extern "C" int pnl_avx512bf16_expands(const PnlWeight* w) {
    if (!pnl_avx512bf16_reads(w)) return 0;
    return w->weight_dtype == PNL_BF16 || (w->value_kind == PNL_CODES && w->weight_dtype == PNL_F32);
}

extern "C" void pnl_expand_rows_avx512bf16(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end) {
    with_source(w, [&](auto* source) {
        expand_by_mask<std::remove_pointer_t<decltype(source)>>(w, out, row_begin, row_end);
    });
}

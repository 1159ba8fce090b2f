// AMX kernels for bfloat16 activations (the avx512bf16 level's features plus AMX-TILE and
// AMX-BF16): the sources decode each row's weights as avx512bf16.cpp's kernel does, and the tile
// unit multiplies them, so the vector ports only decode.
//
// Why: the vdpbf16ps kernel's products grow with the tokens (two vdpbf16ps per row, step and
// token, on the ports the decode needs too), so from a few tokens on it falls behind torch's
// dense product on AMX (runtime/token_limits.py, AMX_BF16_DOT_PATH). Here the weights of 16 rows meet the activations in the tile unit: A = 16 rows x 32
// bfloat16 weights (one source register per row, stored to a buffer), B = the activations as 16
// pairs of columns x up to 16 tokens, C (16 rows x tokens, float32) += A B over pairs. One step
// of 64 columns is two tile products (the source's two registers), whatever the token count: a
// call of 16 tokens decodes the weights once and costs about what one token does.
//
// The decode's stores and the tile loads cost about as much as a token's vdpbf16ps, so the tiles
// pay from a few tokens on (pnl_amx_min_tokens; bench/README.md's per-layer tables); fewer take
// the avx512bf16 kernel. tdpbf16ps sums each pair's products in float32 (bfloat16 inputs below
// 1e-38 read as zero, as vdpbf16ps reads them): within float32 rounding of expand-then-multiply.
// Weights whose values are scaled per group after the sum (a float32 layer's codes) and float32
// activations take the avx512bf16 level's kernels (pnl_amx_reads); so do the rows of a part past
// its last whole 16.
#include <immintrin.h>
#include <stdint.h>

#include <type_traits>

#include "kernels.h"

namespace {

#include "bf16_sources.inc"

constexpr int kTileRows = 16;

// The tile registers' shapes (palette 1): 0 and 1 the sums of the steps' first and second 32
// columns, 2 and 3 their weights, 4 and 5 their activations.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

void configure(int tokens) {
    TileConfig config;
    for (int t = 0; t < 6; ++t) {
        config.rows[t] = kTileRows;
        config.colsb[t] = (uint16_t)(t == 2 || t == 3 ? 64 : 4 * tokens);
    }
    _tile_loadconfig(&config);
}

// The activations as the B tiles read them: per step of 64 columns, two tiles (the source's first
// and second 32 words), each 16 rows (pairs of words, in the source's order: ORDER) of one
// 32-bit pair per token. xq: cols_pad * tokens words.
template <const Order* ORDER>
void lay_out_pairs(const uint16_t* xb, int tokens, int64_t cp, uint32_t* xq) {
    const StepOrder<ORDER> order;
    const __m512i across = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(tokens));  // pair k of a token at k * tokens
    for (int64_t c = 0; c < cp; c += 64, xq += 32 * tokens)
        for (int t = 0; t < tokens; ++t) {
            __m512i x0, x1;
            order.load(xb + t * cp + c, x0, x1);
            if (tokens == 1) {
                _mm512_store_si512((void*)xq, x0);
                _mm512_store_si512((void*)(xq + 16), x1);
            } else {
                _mm512_i32scatter_epi32((void*)(xq + t), across, x0, 4);
                _mm512_i32scatter_epi32((void*)(xq + 16 * tokens + t), across, x1, 4);
            }
        }
}

// Rows [r, r + 16): y[t][r + i] for every token. abuf: two steps' A tiles (ping-pong, so that a
// step's stores need not wait for the previous step's tile loads); cbuf: the two sums' tiles.
template <bool MASKED, class Source>
void block16(const PnlWeight* w, const uint32_t* xq, int tokens, float* y, int64_t r, uint16_t* abuf,
             float* cbuf) {
    const int64_t cp = w->cols_pad, words = cp / 64, R = w->rows;
    const bool grouped = w->value_kind == PNL_CODES;
    const int64_t gs = w->groups == 1 ? cp : w->group_size;  // a multiple of 64 (pnl_avx512bf16_reads)
    Source src[kTileRows];
    const uint64_t* mrow[kTileRows];
    for (int i = 0; i < kTileRows; ++i) {
        src[i].row(w, r + i, kTileRows);
        mrow[i] = MASKED ? w->mask + (r + i) * words : nullptr;
    }
    _tile_zero(0);
    _tile_zero(1);
    int64_t next_group = 0, g = 0;
    for (int64_t word = 0; word < words; ++word) {
        if (grouped && word * 64 == next_group) {
            for (int i = 0; i < kTileRows; ++i) src[i].group(w, r + i, g < w->groups ? g : w->groups - 1);
            ++g;
            next_group += gs;
        }
        uint16_t* a_tile = abuf + (word & 1) * 2 * kTileRows * 32;  // (16, 32) bfloat16, then b's
        for (int i = 0; i < kTileRows; ++i) {
            __m512bh a, b;
            src[i].template next<MASKED>(MASKED ? mrow[i] + word : nullptr, a, b);
            _mm512_store_si512((void*)(a_tile + 32 * i), (__m512i)a);
            _mm512_store_si512((void*)(a_tile + kTileRows * 32 + 32 * i), (__m512i)b);
        }
        const uint32_t* xs = xq + word * 32 * tokens;
        _tile_loadd(2, a_tile, 64);
        _tile_loadd(4, xs, 4 * tokens);
        _tile_dpbf16ps(0, 2, 4);
        _tile_loadd(3, a_tile + kTileRows * 32, 64);
        _tile_loadd(5, xs + 16 * tokens, 4 * tokens);
        _tile_dpbf16ps(1, 3, 5);
    }
    _tile_stored(0, cbuf, 4 * tokens);
    _tile_stored(1, cbuf + kTileRows * tokens, 4 * tokens);
    for (int i = 0; i < kTileRows; ++i)
        for (int t = 0; t < tokens; ++t)
            y[t * R + r + i] = cbuf[i * tokens + t] + cbuf[(kTileRows + i) * tokens + t];
}

template <bool MASKED, class Source>
void rows(const PnlWeight* w, const uint16_t* xb, int tokens, float* y, int64_t r0, int64_t r1,
          uint8_t* scratch) {
    uint32_t* xq = (uint32_t*)scratch;  // cols_pad * tokens words
    uint16_t* abuf = (uint16_t*)(scratch + (size_t)w->cols_pad * tokens * 2);
    float* cbuf = (float*)(abuf + 4 * kTileRows * 32);
    lay_out_pairs<Source::kOrder>(xb, tokens, w->cols_pad, xq);
    configure(tokens);
    for (int64_t r = r0; r < r1; r += kTileRows) block16<MASKED, Source>(w, xq, tokens, y, r, abuf, cbuf);
    _tile_release();
}

template <class Visit>
void with_source(const PnlWeight* w, Visit visit) {
    if (w->value_kind == PNL_BF16) return visit((BF16Values*)nullptr);
    if (w->code_bits == 8) return visit((Code8Values<true>*)nullptr);
    return visit((Code4Values<true>*)nullptr);
}

}  // namespace

extern "C" int pnl_amx_reads(const PnlWeight* w) {
    return pnl_avx512bf16_reads(w) && w->weight_dtype == PNL_BF16;
}

// Tokens from which the tiles beat vdpbf16ps on this weight, by what a step's decode costs: a
// dense weight's step is two loads, so its vdpbf16ps cost shows from 2 tokens; codes' lookups
// from 4; a masked bfloat16 row's expands are cheaper than its stores to the tile buffer up to
// 4 tokens, not at 8. Set from scratch timings at 1, 2, 4, 8 and 16 tokens (the Xeon of
// bench/README.md, 2 threads, 7B shapes from DRAM); a wrong switch point costs speed only.
extern "C" int pnl_amx_min_tokens(const PnlWeight* w) {
    if (w->value_kind == PNL_BF16) return w->has_mask ? 8 : 2;
    return 4;
}

extern "C" size_t pnl_amx_scratch_bytes(int64_t cols_pad, int tokens) {
    const size_t tiles = 4 * kTileRows * 32 * sizeof(uint16_t) + 2 * kTileRows * 16 * sizeof(float);
    const size_t bf16_kernel = (size_t)2 * 16 * cols_pad;  // the rows past the last 16
    const size_t ours = (size_t)cols_pad * tokens * sizeof(uint16_t) + tiles;
    return ours > bf16_kernel ? ours : bf16_kernel;
}

extern "C" void pnl_rows_amx(const PnlWeight* w, const uint16_t* xb, int tokens, float* y, int64_t row_begin,
                             int64_t row_end, uint8_t* scratch) {
    const int64_t whole = row_begin + (row_end - row_begin) / kTileRows * kTileRows;
    if (whole > row_begin)
        with_source(w, [&](auto* source) {
            using Source = std::remove_pointer_t<decltype(source)>;
            if (w->has_mask) rows<true, Source>(w, xb, tokens, y, row_begin, whole, scratch);
            else rows<false, Source>(w, xb, tokens, y, row_begin, whole, scratch);
        });
    if (whole < row_end) pnl_rows_avx512bf16(w, xb, tokens, y, whole, row_end, scratch);
}

// The int8 kernel for AVX2 (x86 CPUs without AVX512_VNNI: AMD Zen 2 and 3, Intel before Ice
// Lake): int8.cpp's sums, with vpmaddubsw + vpmaddwd in place of vpdpbusd and a table in place
// of vpexpandb.
//
// A step's 64 codes are made 32 columns at a time, in column order, a byte each; a column without
// a value holds the group's zero point, so that its code - zero is 0. Dense codes are loaded as
// they are. Masked ones are placed 16 columns to a 128-bit lane by vpshufb: each column's index
// comes from a table by its mask byte (kRank: its rank among the byte's set bits, or 0x80 where
// it has no value), and vpblendvb puts the zero point where the index says none. The row's 4-bit
// codes are spread to bytes once, into L1 (scratch), so that any 16 columns' codes are one
// unaligned load whatever nibble they start on.
//
// vpmaddubsw multiplies unsigned bytes by signed ones into int16 pairs: 4-bit codes (0-15) times
// int8 activations stay far below int16's limit; an 8-bit code's pair could pass it (2 * 255 *
// 127), so 8-bit codes go as two nibbles (code = 16 * high + low), the high pairs weighted 16 by
// vpmaddwd. vpmaddwd sums the pairs into 8 int32 lanes of 4 columns each, as vpdpbusd's, carried
// over a segment (the steps sharing the activations' block scale and the weights' group, as
// int8.cpp), then converted and scaled. (Making 8-bit codes signed, code - 128, as llama.cpp's
// AVX2 dot of two int8 blocks does, was one operation fewer, but the 128 given back per segment
// left float sums of large terms that cancel, off by far more than the rounding of the result.)
// Rows one at a time, tokens in passes of up to 4.
//
// Built with -mavx2 -mfma -mpopcnt; everything here is file-local but the entry point.
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

namespace {

// kRank.byte[m]: for mask byte m, byte i = the rank of column i among m's set bits, or 0x80
// (vpshufb's zero, and vpblendvb's "take the fill") where bit i is clear. Made by the compiler.
struct RankTable {
    uint64_t byte[256];
    constexpr RankTable() : byte() {
        for (int m = 0; m < 256; ++m) {
            uint64_t v = 0;
            int rank = 0;
            for (int i = 0; i < 8; ++i) v |= (uint64_t)((m >> i & 1) ? rank++ : 0x80) << (8 * i);
            byte[m] = v;
        }
    }
};
constexpr RankTable kRank{};

#include "prefetch.inc"  // one row at a time: its streams run on into the next row's, a fixed distance

// Row r's codes as bytes: 8-bit ones where they are, 4-bit ones spread into `spread` (at least
// the row's codes rounded up to 64, and cols_pad: a dense row's last step reads that far).
const uint8_t* row_codes(const PnlWeight* w, int64_t r, uint8_t* spread) {
    const uint8_t* values = (const uint8_t*)w->values;
    if (w->code_bits == 8) return values + w->row_start[r];
    const int64_t first = w->row_start[r];  // even: a row's codes start on a whole byte
    int64_t n = w->row_start[r + 1] - first;
    if (!w->has_mask && n < w->cols_pad) n = w->cols_pad;
    const uint8_t* packed = values + first / 2;
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (int64_t c = 0; c < n; c += 64) {  // 32 bytes: 64 codes, read past the row within the tail
        prefetch(packed + c / 2, kPrefetchBytes / 2);
        const __m256i b = _mm256_loadu_si256((const __m256i*)(packed + c / 2));
        const __m256i lo = _mm256_and_si256(b, low), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
        // byte j -> codes 2j (low nibble) and 2j+1: the unpacks interleave within 128-bit lanes,
        // giving codes 0-15 and 32-47 (a), 16-31 and 48-63 (d)
        const __m256i a = _mm256_unpacklo_epi8(lo, hi), d = _mm256_unpackhi_epi8(lo, hi);
        _mm256_storeu_si256((__m256i*)(spread + c), _mm256_permute2x128_si256(a, d, 0x20));
        _mm256_storeu_si256((__m256i*)(spread + c + 32), _mm256_permute2x128_si256(a, d, 0x31));
    }
    return spread;
}

// 32 columns of a masked row: mask bits m4 (bit i: column i), codes from q on; `used` is set to
// how many codes they took.
inline __m256i place32(const uint8_t* q, uint32_t m4, __m256i fill, int* used) {
    const unsigned m0 = m4 & 255, m1 = m4 >> 8 & 255, m2 = m4 >> 16 & 255, m3 = m4 >> 24;
    const uint64_t ones = 0x0101010101010101ull;
    const int lane0 = __builtin_popcount(m4 & 0xffff);  // codes of columns 0-15: lane 1 starts after them
    const __m256i idx = _mm256_set_epi64x((long long)(kRank.byte[m3] + (uint64_t)__builtin_popcount(m2) * ones),
                                          (long long)kRank.byte[m2],
                                          (long long)(kRank.byte[m1] + (uint64_t)__builtin_popcount(m0) * ones),
                                          (long long)kRank.byte[m0]);
    const __m256i src = _mm256_loadu2_m128i((const __m128i*)(q + lane0), (const __m128i*)q);
    *used = __builtin_popcount(m4);
    // an index with its top bit set (0x80 + at most 8 after the add) has no value: the fill
    return _mm256_blendv_epi8(_mm256_shuffle_epi8(src, idx), fill, idx);
}

#include "avx2_sum.inc"

// Row r for NT tokens from t0 (NT <= 4), its codes as bytes in `codes`.
template <int NT, bool MASKED, bool BYTE8>
void row_pass(const PnlWeight* w, const PnlQuantX* x, const float* gsum, float* y, int64_t r, int t0,
              const uint8_t* codes) {
    const int64_t words = w->cols_pad / 64, G = w->groups, T = x->tokens;
    const int64_t gs = G == 1 ? w->cols_pad : w->group_size;  // a multiple of 64 (pnl_int8_reads)
    const int64_t seg = gs % 128 == 0 ? 2 : 1;  // steps a segment: the activations' block, or one step
    const float* scales = w->scales + r * G;
    const uint8_t* zeros = w->zeros + r * G;
    float corr[NT];
    for (int t = 0; t < NT; ++t) corr[t] = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
        const float sz = scales[g] * (float)zeros[g];
        for (int t = 0; t < NT; ++t) corr[t] += sz * gsum[(t0 + t) * G + g];
    }
    const __m256i ones16 = _mm256_set1_epi16(1), sixteen16 = _mm256_set1_epi16(16), nibble = _mm256_set1_epi8(0x0f);
    const uint64_t* mask = MASKED ? w->mask + r * words : nullptr;
    const uint8_t* q = codes;
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t w0 = 0; w0 < words; w0 += seg) {
        const int64_t steps = words - w0 < seg ? words - w0 : seg;
        const int64_t g = w0 * 64 / gs < G ? w0 * 64 / gs : G - 1;  // the last group takes any rest
        const __m256i fill = _mm256_set1_epi8((char)zeros[g]);
        __m256i carried[NT];
        for (int t = 0; t < NT; ++t) carried[t] = _mm256_setzero_si256();
        for (int64_t word = w0; word < w0 + steps; ++word) {
            if (MASKED) prefetch(mask + word, kPrefetchBytes / 4);
            for (int half = 0; half < 2; ++half) {
                __m256i c;
                if (BYTE8) prefetch(q, kPrefetchBytes);  // 8-bit codes are read where they are
                if (MASKED) {
                    int used;
                    c = place32(q, (uint32_t)(mask[word] >> (32 * half)), fill, &used);
                    q += used;
                } else {
                    c = _mm256_loadu_si256((const __m256i*)q);
                    q += 32;
                }
                // 8-bit: code = 16 * high + low nibble, each product of a nibble safe in int16
                const __m256i low = BYTE8 ? _mm256_and_si256(c, nibble) : c;
                const __m256i high = BYTE8 ? _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble) : c;
                for (int t = 0; t < NT; ++t) {
                    const __m256i xv = _mm256_load_si256((const __m256i*)(x->q + (word * T + t0 + t) * 64 + 32 * half));
                    __m256i lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(low, xv), ones16);
                    if (BYTE8) lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(_mm256_maddubs_epi16(high, xv), sixteen16));
                    carried[t] = _mm256_add_epi32(carried[t], lanes);
                }
            }
        }
        for (int t = 0; t < NT; ++t)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(carried[t]),
                                     _mm256_set1_ps(scales[g] * x->scale[(t0 + t) * words + w0]), acc[t]);
    }
    for (int t = 0; t < NT; ++t) y[(t0 + t) * w->rows + r] = reduce(acc[t]) - corr[t];
}

template <bool MASKED, bool BYTE8>
void rows(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t r0, int64_t r1, const float* gsum,
          uint8_t* spread) {
    const int T = x->tokens;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* codes = row_codes(w, r, spread);
        for (int t0 = 0; t0 < T; t0 += 4) {  // passes of 4 tokens, the row's codes read again from L1
            switch (T - t0 < 4 ? T - t0 : 4) {
                case 1: row_pass<1, MASKED, BYTE8>(w, x, gsum, y, r, t0, codes); break;
                case 2: row_pass<2, MASKED, BYTE8>(w, x, gsum, y, r, t0, codes); break;
                case 3: row_pass<3, MASKED, BYTE8>(w, x, gsum, y, r, t0, codes); break;
                default: row_pass<4, MASKED, BYTE8>(w, x, gsum, y, r, t0, codes); break;
            }
        }
    }
}

}  // namespace

extern "C" void pnl_rows_int8_avx2(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin,
                                   int64_t row_end, uint8_t* scratch) {
    const float* gsum = pnl_int8_group_sums(w, x, scratch);
    uint8_t* spread = pnl_int8_tables_in(w, x->tokens, scratch);
    const bool masked = w->has_mask != 0, byte8 = w->code_bits == 8;
    if (masked && byte8) rows<true, true>(w, x, y, row_begin, row_end, gsum, spread);
    else if (masked) rows<true, false>(w, x, y, row_begin, row_end, gsum, spread);
    else if (byte8) rows<false, true>(w, x, y, row_begin, row_end, gsum, spread);
    else rows<false, false>(w, x, y, row_begin, row_end, gsum, spread);
}

// pnl_quantize_x 8 columns at a time (a call rounds every activation of the pass on one thread
// before any product): the same float32 operations, so the same bits. A block reaching past
// `cols` is copied into zeros first (AVX2 has no masked load of 16-bit words).
extern "C" PnlQuantX pnl_quantize_x_avx2(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                                         uint8_t* buffer) {
    const PnlQuantX out = pnl_quantx_in(cols_pad, tokens, buffer);
    const int64_t steps = out.steps;
    int8_t* q = (int8_t*)buffer;
    const __m256 top = _mm256_set1_ps(127.0f), bottom = _mm256_set1_ps(-127.0f);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    // packs_epi32 then packs_epi16 leave 4-byte groups in the order 0, 2, 4, 6, 1, 3, 5, 7
    const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    alignas(32) float padded[PNL_INT8_BLOCK];
    for (int t = 0; t < tokens; ++t) {
        const float* xf = (const float*)x + t * cols;
        const uint16_t* xh = (const uint16_t*)x + t * cols;
        for (int64_t c0 = 0; c0 < cols_pad; c0 += PNL_INT8_BLOCK) {
            const int64_t width = cols_pad - c0 < PNL_INT8_BLOCK ? cols_pad - c0 : PNL_INT8_BLOCK;
            const int vectors = (int)(width / 8);
            const bool whole = c0 + width <= cols;
            if (!whole)
                for (int64_t c = 0; c < width; ++c) {
                    const int64_t col = c0 + c;
                    float value = 0.0f;
                    if (col < cols) value = x_bf16 ? __builtin_bit_cast(float, (uint32_t)xh[col] << 16) : xf[col];
                    padded[c] = value;
                }
            __m256 v[PNL_INT8_BLOCK / 8];
            __m256 amax = _mm256_setzero_ps();
            for (int j = 0; j < vectors; ++j) {
                const int64_t col = c0 + 8 * j;
                if (!whole) v[j] = _mm256_load_ps(padded + 8 * j);
                else if (x_bf16)
                    v[j] = _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(xh + col))), 16));
                else v[j] = _mm256_loadu_ps(xf + col);
                amax = _mm256_max_ps(amax, _mm256_and_ps(v[j], magnitude));
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float a = _mm_cvtss_f32(m4);
            const float s = a > 0.0f ? a / 127.0f : 0.0f, inv = a > 0.0f ? 127.0f / a : 0.0f;
            const __m256 vinv = _mm256_set1_ps(inv);
            for (int j0 = 0; j0 < vectors; j0 += 8) {  // a step: 64 columns
                const int64_t step = (c0 + 8 * j0) / 64;
                __m256i qi[8];
                __m256i total = _mm256_setzero_si256();
                for (int j = 0; j < 8; ++j) {
                    __m256 r = _mm256_mul_ps(v[j0 + j], vinv);
                    r = _mm256_round_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // nearest even
                    r = _mm256_min_ps(_mm256_max_ps(r, bottom), top);
                    qi[j] = _mm256_cvtps_epi32(r);
                    total = _mm256_add_epi32(total, qi[j]);
                }
                int8_t* dst = q + (step * tokens + t) * 64;
                for (int h = 0; h < 2; ++h) {  // 32 columns: four registers of 8
                    const __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(qi[4 * h], qi[4 * h + 1]),
                                                             _mm256_packs_epi32(qi[4 * h + 2], qi[4 * h + 3]));
                    _mm256_storeu_si256((__m256i*)(dst + 32 * h), _mm256_permutevar8x32_epi32(words, in_order));
                }
                __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
                t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
                t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
                ((float*)out.scale)[t * steps + step] = s;
                ((float*)out.sum)[t * steps + step] = s * (float)_mm_cvtsi128_si32(t4);
            }
        }
    }
    return out;
}

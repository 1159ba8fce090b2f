// The one weight descriptor every kernel reads, and the entry points of each ISA file.
//
// Every compressed layout is repacked at load (runtime/cpu_kernels.py) into one shape the
// kernels walk: rows of `cols_pad` columns (a multiple of 64), an optional bit per weight
// saying which columns hold a stored value, and the stored values row after row. A dense
// quantized layer has no mask; an n:m layer becomes a mask with its kept slots set (2:4
// takes 4 bits per 4 weights either way). Keeping one shape keeps one kernel per value kind.
//
// This header holds plain data only (no inline functions): it is included by files built
// with different ISA flags, and an inline function emitted in an AVX-512 file could be the
// copy the linker keeps for the portable one.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum PnlValueKind {
    PNL_F32 = 0,  // stored float32 values
    PNL_F16 = 1,  // stored float16 values
    PNL_BF16 = 2, // stored bfloat16 values
    PNL_CODES = 3 // integer codes of `code_bits` bits, value = scale * (code - zero)
};

// PNL_AVX512_BF16: the AVX-512 level plus AVX512_BF16; bfloat16 activations of the
// weights pnl_avx512bf16_reads takes go through vdpbf16ps, everything else as PNL_AVX512.
// PNL_AMX_BF16: the AVX512_BF16 level plus AMX-TILE/AMX-BF16 (and the OS's leave to use the
// tiles); the bfloat16 weights pnl_amx_reads takes go through the tile unit (amx.cpp), everything
// else as PNL_AVX512_BF16.
enum PnlLevel { PNL_PORTABLE = 0, PNL_AVX2 = 1, PNL_AVX512 = 2, PNL_AVX512_BF16 = 3, PNL_AMX_BF16 = 4 };

typedef struct PnlWeight {
    int64_t rows;        // R
    int64_t cols;        // C
    int64_t cols_pad;    // C rounded up to 64: the mask's width, the padded activations' width
    int32_t value_kind;  // PnlValueKind
    int32_t code_bits;   // 1, 2, 4 or 8 (PNL_CODES only)
    int32_t weight_dtype;// PNL_F32/F16/BF16: the dtype a dequantized value is rounded to
    int32_t has_mask;    // 0: every column of a row is stored (dense codes, cols_pad of them)
    int64_t group_size;  // columns per (scale, zero); cols when one per row
    int64_t groups;      // per row
    const uint64_t* mask;      // (R, cols_pad / 64), bit c % 64 of word c / 64, or null
    const int64_t* row_start;  // (R + 1) index of each row's first stored value; codes: a whole byte
    const void* values;        // stored values or packed codes (first code in the lowest bits)
    const float* scales;       // (R, groups) or null
    const uint8_t* zeros;      // (R, groups) zero points (integers, as the file stores them), or null
    int32_t even_steps;        // 1: every 64-column step of a masked row holds an even number of
                               // codes (cpu_layout.py pads them), so 4-bit steps start on a byte
    int32_t x_int8;            // 1: products round the activations to int8 first (PnlQuantX), where
                               // pnl_int8_reads(w); opt-in (runtime/int8_activations.py)
} PnlWeight;

// Activations rounded to int8 for the int8 kernels (the opt-in of PnlWeight.x_int8): per token,
// blocks of PNL_INT8_BLOCK columns, each with one float32 scale, q = nearest-even(x * (127 /
// amax)) and x ~ q * (amax / 127), as llama.cpp's Q8 activations. Made once per pass of up to 16
// tokens (pnl_quantize_x) and read by every weight of the call.
#define PNL_INT8_BLOCK 128
typedef struct PnlQuantX {
    const int8_t* q;    // (steps, tokens, 64): a step's 64 columns of every token together
    const float* scale; // (tokens, steps): the scale of the block holding each step
    const float* sum;   // (tokens, steps): scale * the sum of the step's q
    int64_t steps;      // cols_pad / 64
    int tokens;
} PnlQuantX;
// Bytes pnl_quantize_x writes for `tokens` tokens of cols_pad columns (q, scale, sum, aligned).
size_t pnl_quantize_x_bytes(int64_t cols_pad, int tokens);
// x (tokens, C) float32 or bfloat16 (x_bf16), rows `cols` apart, into `buffer` (64-byte aligned,
// pnl_quantize_x_bytes of it); the columns past C are zero.
PnlQuantX pnl_quantize_x(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens, uint8_t* buffer);
typedef PnlQuantX (*PnlQuantizeX)(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                                  uint8_t* buffer);
// Where pnl_quantize_x puts each part in `buffer` (the parts' pointers; nothing written).
PnlQuantX pnl_quantx_in(int64_t cols_pad, int tokens, uint8_t* buffer);
// Whether the int8 kernels read w (4- and 8-bit codes in groups of a multiple of 64 columns).
int pnl_int8_reads(const PnlWeight* w);
// Rows [row_begin, row_end) of y (T, R) float32 = dequantized x @ W^T, where W's weights are
// scale * (code - zero) in float32 (not rounded to the layer's dtype): the int8 kernel, per
// ISA; scratch holds pnl_int8_scratch_bytes.
typedef void (*PnlKernelInt8)(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin, int64_t row_end,
                              uint8_t* scratch);
size_t pnl_int8_scratch_bytes(const PnlWeight* w, int tokens);
// Rows that walk a call of 9-16 tokens together, a panel of columns at a time (int8.cpp).
#define PNL_INT8_PANEL_ROWS 8
// The vector kernels' shared parts of scratch (quantized_x.cpp): the per-call table gsum (T, G),
// for each token and group the sum over the group's steps of x.scale * sum(q), written into
// scratch; and where a kernel's own part of scratch starts, after it.
const float* pnl_int8_group_sums(const PnlWeight* w, const PnlQuantX* x, uint8_t* scratch);
uint8_t* pnl_int8_tables_in(const PnlWeight* w, int tokens, uint8_t* scratch);
void pnl_rows_int8_portable(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin, int64_t row_end,
                            uint8_t* scratch);

// One ISA's kernel: rows [row_begin, row_end) of y (T, R) float32 = xp (T, cols_pad) @ W^T.
// xp is the activations in float32, zero past `cols`. scratch holds cols_pad + 64 bytes.
typedef void (*PnlKernel)(const PnlWeight* w, const float* xp, int tokens, float* y,
                          int64_t row_begin, int64_t row_end, uint8_t* scratch);

void pnl_rows_portable(const PnlWeight* w, const float* xp, int tokens, float* y,
                       int64_t row_begin, int64_t row_end, uint8_t* scratch);
// Rows [row_begin, row_end) of the dense weight (R, C), in its dtype, into out (scalar, any ISA).
void pnl_expand_rows(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end);
// Whether the vector kernels read this weight (else the portable one does, for any ISA).
int pnl_vector_reads(const PnlWeight* w, int lanes);
// api.cpp: y_i (T, R_i) float32 = x (T, C) @ W_i^T for up to 8 weights of the same columns in one
// call of the thread team; x float32 or bfloat16 (x_bf16). Returns 0, -1 (level), -2 (arguments).
int pnl_matmul_many(const PnlWeight* const* ws, int count, const void* x, int x_bf16, int64_t tokens,
                    float* const* ys, int threads, int level);
// api.cpp: task(context, begin, end) over items [0, items) in up to `threads` contiguous parts
// on the products' thread team (the calling thread one of them); returns when all are done.
typedef void (*PnlTask)(void* context, int64_t begin, int64_t end);
void pnl_parallel_for(PnlTask task, void* context, int64_t items, int threads);
// Attention at decode for the G query heads of one key/value head (attend.inc), per ISA file:
// out (G, D) = softmax(keys (L, D) @ q (G, D)ᵀ * scaling) @ values (L, D), float32 arithmetic;
// the cached key/value rows are float32, or bfloat16 bits (kv_bf16: a bfloat16 model's cache,
// whose keys and values are bfloat16 already), `stride` elements apart; probs: G * L floats;
// stats (unless null): each head's maximum score and sum of exponentials (G, 2), to merge parts.
typedef void (*PnlAttend)(const float* q, const void* keys, const void* values, int kv_bf16, int64_t length,
                          int64_t dim, int64_t stride, int64_t heads, float scaling, float* probs, float* out,
                          float* stats);
void pnl_attend_portable(const float* q, const void* keys, const void* values, int kv_bf16, int64_t length,
                         int64_t dim, int64_t stride, int64_t heads, float scaling, float* probs, float* out,
                         float* stats);
#if defined(__x86_64__) || defined(_M_X64)
void pnl_attend_avx2(const float* q, const void* keys, const void* values, int kv_bf16, int64_t length,
                     int64_t dim, int64_t stride, int64_t heads, float scaling, float* probs, float* out,
                     float* stats);
void pnl_attend_avx512(const float* q, const void* keys, const void* values, int kv_bf16, int64_t length,
                       int64_t dim, int64_t stride, int64_t heads, float scaling, float* probs, float* out,
                       float* stats);
void pnl_rows_avx2(const PnlWeight* w, const float* xp, int tokens, float* y,
                   int64_t row_begin, int64_t row_end, uint8_t* scratch);
void pnl_rows_avx512(const PnlWeight* w, const float* xp, int tokens, float* y,
                     int64_t row_begin, int64_t row_end, uint8_t* scratch);
// The expansion with the float32 kernel's sources, for a weight pnl_vector_reads(w, 32) takes:
// the bits pnl_expand_rows gives, 32 columns a step; scratch holds cols_pad + 128 bytes.
void pnl_expand_rows_avx512(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end, uint8_t* scratch);
// The kernel for bfloat16 activations: xb (T, cols_pad) bfloat16 bits, zero past `cols`; only
// for a weight pnl_avx512bf16_reads takes. scratch holds 2 * 16 * cols_pad bytes.
typedef void (*PnlKernelBf16)(const PnlWeight* w, const uint16_t* xb, int tokens, float* y,
                              int64_t row_begin, int64_t row_end, uint8_t* scratch);
void pnl_rows_avx512bf16(const PnlWeight* w, const uint16_t* xb, int tokens, float* y,
                         int64_t row_begin, int64_t row_end, uint8_t* scratch);
int pnl_avx512bf16_reads(const PnlWeight* w);
// The expansion with the kernel's sources (bfloat16 layers it reads, float32 layers' 4- and
// 8-bit codes): the bits pnl_expand_rows gives (a bfloat16 weight below 1e-38 made zero),
// 64 columns a step.
int pnl_avx512bf16_expands(const PnlWeight* w);
void pnl_expand_rows_avx512bf16(const PnlWeight* w, void* out, int64_t row_begin, int64_t row_end);
// amx.cpp: the tile kernel, for a weight pnl_amx_reads takes (a bfloat16 layer the avx512bf16
// kernel reads), bfloat16 activations as pnl_rows_avx512bf16; scratch: pnl_amx_scratch_bytes.
int pnl_amx_reads(const PnlWeight* w);
int pnl_amx_min_tokens(const PnlWeight* w);  // tokens from which the tiles are the faster kernel
size_t pnl_amx_scratch_bytes(int64_t cols_pad, int tokens);
void pnl_rows_amx(const PnlWeight* w, const uint16_t* xb, int tokens, float* y, int64_t row_begin, int64_t row_end,
                  uint8_t* scratch);
// int8.cpp: the int8 kernel through AVX512_VNNI's vpdpbusd (the AVX-512 level plus VNNI).
void pnl_rows_int8_avx512vnni(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin,
                              int64_t row_end, uint8_t* scratch);
// int8_avx2.cpp: the int8 kernel with AVX2 (vpmaddubsw, a table for the expansion).
void pnl_rows_int8_avx2(const PnlWeight* w, const PnlQuantX* x, float* y, int64_t row_begin, int64_t row_end,
                        uint8_t* scratch);
// int8.cpp: pnl_quantize_x with AVX-512, bit for bit its result (the int8 kernel's companion).
PnlQuantX pnl_quantize_x_avx512(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                                uint8_t* buffer);
// int8_avx2.cpp: pnl_quantize_x with AVX2, bit for bit its result (the AVX2 int8 kernel's companion).
PnlQuantX pnl_quantize_x_avx2(const void* x, int x_bf16, int64_t cols, int64_t cols_pad, int tokens,
                              uint8_t* buffer);
#endif

#ifdef __cplusplus
}
#endif

// A decoder block's decode step in one call: what runtime/decode_loop.py's torch operations do
// for a Llama or Qwen2 block (RMSNorm, q/k/v, rotary, attention over the cache, o, residual,
// RMSNorm, gate/up, SiLU, down, residual), for a model whose every projection the kernels read.
//
// Why: at a small model's decode a step was a third torch operators and Python around the
// kernels (bench/README.md, "A decode step": about 40 operators a block at a few microseconds
// each). Here a block is one call through ctypes: the products go to the thread team (q, k and v
// in one team call, gate and up in another), the rest runs on the calling thread.
//
// Each operation rounds where the torch loop rounds: in a bfloat16 model every intermediate the
// loop holds as a bfloat16 tensor is rounded to bfloat16 here too (to nearest even, as torch
// casts), with float32 arithmetic in between as torch's bfloat16 operators compute. Only the
// order of the sums in the norms' statistics and in attention differs: logits agree with the
// torch loop's up to float32 rounding (tests/runtime/test_decode_block.py).
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "kernels.h"

#define PNL_API __attribute__((visibility("default")))

extern "C" {

// One block's weights and cache, built once per decode loop (runtime/decode_block.py mirrors it).
typedef struct PnlBlock {
    const PnlWeight* proj[7];  // q, k, v, o, gate, up, down
    const float* bias[7];      // each projection's bias as float32, or null
    const void* norm[2];       // (C) in the model's dtype: before attention, before the MLP
    float eps[2];
    void* keys;                // (B, KV, max_len, D) float32 or bfloat16 (kv_bf16): this block's cache
    void* values;
    int64_t max_len;
    int32_t heads, kv_heads, head_dim;
    float scaling;             // of the scores, as the model's attention scales them
    int32_t kv_bf16;           // 1: the cache holds bfloat16 (a bfloat16 model's keys and values are
                               // bfloat16 already: exact, half the bytes attention reads)
} PnlBlock;

}  // extern "C"

namespace {

enum { Q, K, V, O, GATE, UP, DOWN };

float bits_to_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// float32 -> bfloat16 bits, to nearest even as torch's .to(bfloat16) rounds (nan stays nan).
// Both results computed and one selected, no branch: loops of it vectorize.
uint16_t bf16_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    const uint32_t nan = (bits >> 16) | 0x40u, nearest = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : nearest);
}

// The model's dtype: where the torch loop holds a tensor in it, a value is rounded to it here.
struct Dtype {
    bool bf16;
    float round(float f) const { return bf16 ? bits_to_float((uint32_t)bf16_bits(f) << 16) : f; }
    float load(const void* p, int64_t i) const {
        return bf16 ? bits_to_float((uint32_t)((const uint16_t*)p)[i] << 16) : ((const float*)p)[i];
    }
    int64_t size() const { return bf16 ? 2 : 4; }
    // v already rounded to the dtype: the store is exact
    void store(void* p, int64_t i, float v) const {
        if (bf16) ((uint16_t*)p)[i] = bf16_bits(v);
        else ((float*)p)[i] = v;
    }
};

// out = weight * (x / rms(x)) as LlamaRMSNorm: statistics in float32, cast back, times weight.
void rms_norm(const Dtype& dt, const void* x, const void* weight, float eps, int64_t rows, int64_t cols,
              void* out) {
    for (int64_t r = 0; r < rows; ++r) {
        double squares = 0.0;  // torch sums float32 in vector lanes; a double sum is as close to it as any order
        for (int64_t c = 0; c < cols; ++c) {
            const float h = dt.load(x, r * cols + c);
            squares += (double)(h * h);
        }
        const float inverse = 1.0f / sqrtf((float)(squares / (double)cols) + eps);
        for (int64_t c = 0; c < cols; ++c) {
            const float h = dt.round(dt.load(x, r * cols + c) * inverse);
            dt.store(out, r * cols + c, dt.round(dt.load(weight, c) * h));
        }
    }
}

// A projection's row of n outputs (features 0 .. n-1) as the torch loop holds them, into out:
// the kernel's float32 sums cast to the dtype, then the bias added (one more rounding), as
// CompressedLinear and DecodeLinear do. The elementwise loops here and
// below are written without a modulo or a branch per element, so that the compiler vectorizes
// them at this file's baseline flags (a block's rotary, residuals and SiLU were a twentieth of a
// small model's step, one element at a time).
void projected_row(const Dtype& dt, const float* y, const float* bias, int64_t n, float* out) {
    if (dt.bf16) {
        const Dtype b{true};
        if (bias) for (int64_t i = 0; i < n; ++i) out[i] = b.round(b.round(y[i]) + bias[i]);
        else for (int64_t i = 0; i < n; ++i) out[i] = b.round(y[i]);
    } else {
        if (bias) for (int64_t i = 0; i < n; ++i) out[i] = y[i] + bias[i];
        else for (int64_t i = 0; i < n; ++i) out[i] = y[i];
    }
}

// x (n) in the dtype += the projection's row (its features 0 .. n-1), rounded to the dtype.
void add_projected(const Dtype& dt, void* x, const float* y, const float* bias, int64_t n, float* row) {
    projected_row(dt, y, bias, n, row);
    if (dt.bf16) {
        uint16_t* h = (uint16_t*)x;
        for (int64_t i = 0; i < n; ++i) h[i] = bf16_bits(bits_to_float((uint32_t)h[i] << 16) + row[i]);
    } else {
        float* h = (float*)x;
        for (int64_t i = 0; i < n; ++i) h[i] += row[i];
    }
}

// One head's rotary: out (D) = a * cos + roll(a, D/2) * sin, a the head's projected outputs,
// each product and the sum rounded to the dtype; cos and sin (D) as float32.
void rotate_head(const Dtype& dt, const float* a, const float* cos, const float* sin, int64_t D, float* out) {
    const int64_t half = D / 2;
    for (int64_t d = 0; d < half; ++d)
        out[d] = dt.round(dt.round(a[d] * cos[d]) + dt.round(a[d + half] * sin[d]));
    for (int64_t d = half; d < D; ++d)
        out[d] = dt.round(dt.round(a[d] * cos[d]) + dt.round(a[d - half] * sin[d]));
}

// A key or value row (D floats, rounded to the model's dtype already) into the block's cache at
// element `at`: float32, or bfloat16 bits (exact: only a bfloat16 model's cache is bfloat16).
void cache_row(const PnlBlock* b, void* cache, int64_t at, const float* row, int64_t D) {
    if (b->kv_bf16) {
        uint16_t* out = (uint16_t*)cache + at;
        for (int64_t d = 0; d < D; ++d) out[d] = bf16_bits(row[d]);
    } else {
        memcpy((float*)cache + at, row, (size_t)D * sizeof(float));
    }
}

PnlAttend attend_for(int level) {
#if defined(__x86_64__) || defined(_M_X64)
    if (level >= PNL_AVX512) return pnl_attend_avx512;
    if (level == PNL_AVX2) return pnl_attend_avx2;
#endif
    return pnl_attend_portable;
}

// Products (positions x query heads x head size, over the batch) from which a block's attention
// is split over the team: below, a wake-up costs more than the work (a few hundred positions).
constexpr int64_t kTeamAttentionProducts = int64_t(1) << 18;

// Positions a part of a split context holds at least: below, merging parts costs more than the
// balance gains.
constexpr int64_t kLeastPartPositions = 64;

// One block's attention at one step: queries q (B, H, D) rotated, output attn (B, H * D) in the
// dtype. Item i is part i % P of token i / (KV P)'s key/value head i / P % KV and its query
// heads: positions [p * span, (p + 1) * span) of the context. With P = 1 (a short context, or
// items that share the team out evenly already) an item writes its heads' rows of attn; with
// P > 1 it writes its part's softmax-weighted rows and each head's maximum score and sum of
// exponentials to `parts`, which merge_parts combines.
struct Attention {
    const PnlBlock* b;
    Dtype dt;
    PnlAttend attend;
    const float* q;
    void* attn;
    int64_t length, dim, heads, kv_heads;
    int64_t split, span;  // P, and positions a part
    float* parts;         // P > 1: per item, (G, D) outputs then (G, 2) statistics
};

int64_t part_floats(const Attention& a) { return a.heads / a.kv_heads * (a.dim + 2); }

void attend_items(void* context, int64_t begin, int64_t end) {
    const Attention& a = *static_cast<const Attention*>(context);
    const int64_t D = a.dim, H = a.heads, KV = a.kv_heads, group = H / KV, M = a.b->max_len, P = a.split;
    thread_local std::vector<float> scratch;  // probabilities (G, L), then outputs (G, D)
    if ((int64_t)scratch.size() < group * (a.length + D)) scratch.resize(group * (a.length + D));
    float* probs = scratch.data();
    const int64_t element = a.b->kv_bf16 ? 2 : 4;
    for (int64_t item = begin; item < end; ++item) {
        // query heads g*G .. g*G+G-1 read key/value head g
        const int64_t t = item / (KV * P), g = item / P % KV, part = item % P;
        const int64_t from = part * a.span, count = (a.length - from < a.span ? a.length - from : a.span);
        const int64_t first = ((t * KV + g) * M + from) * D * element;  // bytes to the part's first row
        float* out = P > 1 ? a.parts + item * part_floats(a) : probs + group * a.length;
        a.attend(a.q + (t * H + g * group) * D, (const char*)a.b->keys + first, (const char*)a.b->values + first,
                 a.b->kv_bf16, count, D, D, group, a.b->scaling, probs, out, P > 1 ? out + group * D : nullptr);
        if (P == 1)
            for (int64_t i = 0; i < group * D; ++i)
                a.dt.store(a.attn, t * H * D + g * group * D + i, a.dt.round(out[i]));
    }
}

// The parts of each head's context merged (split attention): each part's output is its own
// softmax's weighted sum, so the whole one's is the sum of the parts' weighted by sum_p e^(m_p - m)
// over the sum of those (m_p a part's maximum score, m the largest, sum_p its sum of exponentials).
void merge_parts(const Attention& a, int64_t batch) {
    const int64_t D = a.dim, H = a.heads, KV = a.kv_heads, group = H / KV, P = a.split, stride = part_floats(a);
    for (int64_t t = 0; t < batch; ++t)
        for (int64_t g = 0; g < KV; ++g) {
            const float* first = a.parts + (t * KV + g) * P * stride;  // the head's P parts
            for (int64_t h = 0; h < group; ++h) {
                float most = -INFINITY;
                for (int64_t p = 0; p < P; ++p) most = fmaxf(most, first[p * stride + group * D + 2 * h]);
                float weights[64], total = 0.0f;
                for (int64_t p = 0; p < P; ++p) {
                    const float* stats = first + p * stride + group * D + 2 * h;
                    weights[p] = stats[1] * expf(stats[0] - most);
                    total += weights[p];
                }
                for (int64_t d = 0; d < D; ++d) {
                    float sum = 0.0f;
                    for (int64_t p = 0; p < P; ++p) sum += weights[p] * first[p * stride + h * D + d];
                    a.dt.store(a.attn, t * H * D + (g * group + h) * D + d, a.dt.round(sum / total));
                }
            }
        }
}

// Parts a head's context is split into on `threads`: enough that the team's share of
// batch x kv_heads x parts items is even (SmolLM2's three key/value heads on two threads took
// two and one), each part kLeastPartPositions or more.
int64_t split_for(int64_t items, int64_t length, int threads) {
    int64_t a = items, b = threads;
    while (b) { const int64_t r = a % b; a = b; b = r; }  // a = gcd(items, threads)
    int64_t parts = threads / a;
    while (parts > 1 && length / parts < kLeastPartPositions) --parts;
    return parts < 64 ? parts : 64;
}

// How a step's attention runs: 0 on the calling thread (a short context, or one thread), else
// on the team in this many parts of each key/value head's context.
int64_t attention_parts(int64_t batch, int64_t heads, int64_t kv_heads, int64_t dim, int64_t length, int threads) {
    if (batch * length * heads * dim < kTeamAttentionProducts || threads < 2) return 0;
    return split_for(batch * kv_heads, length, threads);
}

bool valid(const PnlBlock* b, int64_t pos) {
    for (const PnlWeight* w : b->proj)
        if (!w) return false;
    const int64_t C = b->proj[Q]->cols, H = b->heads, KV = b->kv_heads, D = b->head_dim;
    if (H < 1 || KV < 1 || H % KV || D < 2 || D % 2 || pos < 0 || pos >= b->max_len) return false;
    if (b->proj[Q]->rows != H * D || b->proj[K]->rows != KV * D || b->proj[V]->rows != KV * D) return false;
    if (b->proj[K]->cols != C || b->proj[V]->cols != C || b->proj[O]->cols != H * D || b->proj[O]->rows != C)
        return false;
    if (b->proj[GATE]->cols != C || b->proj[UP]->cols != C || b->proj[UP]->rows != b->proj[GATE]->rows) return false;
    if (b->proj[DOWN]->cols != b->proj[GATE]->rows || b->proj[DOWN]->rows != C) return false;
    return b->norm[0] && b->norm[1] && b->keys && b->values && (b->kv_bf16 == 0 || b->kv_bf16 == 1);
}

}  // namespace

extern "C" {

// x (B, C) in the model's dtype (float32: dtype PNL_F32, bfloat16: PNL_BF16), the hidden states
// of `batch` tokens at position `pos`, becomes the block's output in place; the block's keys and
// values at `pos` are written to its cache. cos and sin: (D) rotary tables for `pos` in the
// model's dtype, sin with rotate_half's sign folded in (decode_loop.py's tables).
// Returns 0, or -1 for a level this CPU lacks, -2 for bad arguments.
PNL_API int pnl_decode_block(const PnlBlock* b, void* x, int64_t batch, int dtype, const void* cos,
                             const void* sin, int64_t pos, int threads, int level) {
    if (!b || !x || !cos || !sin || batch < 1 || (dtype != PNL_F32 && dtype != PNL_BF16) || !valid(b, pos)) return -2;
    if (b->kv_bf16 && dtype != PNL_BF16) return -2;  // a float32 model's keys would be rounded
    const Dtype dt{dtype == PNL_BF16};
    const int64_t B = batch, C = b->proj[Q]->cols, H = b->heads, KV = b->kv_heads, D = b->head_dim;
    const int64_t I = b->proj[GATE]->rows, L = pos + 1;
    // Scratch, kept per thread: the dtype buffers (norm output, attention output, MLP activation)
    // and the float32 products.
    thread_local std::vector<float> floats;
    const int64_t need = B * C * 2 + B * H * D * 3 + B * KV * D * 2 + B * I * 4 + 4 * D + C + 64;
    if ((int64_t)floats.size() < need) floats.resize(need);
    float* at = floats.data();
    auto take = [&at](int64_t n) { float* p = at; at += n; return p; };
    void* h = take(B * C);            // normed input, dtype
    float* yq = take(B * H * D);
    float* yk = take(B * KV * D);
    float* yv = take(B * KV * D);
    void* attn = take(B * H * D);     // attention output, dtype
    float* yo = take(B * C);
    float* yg = take(B * I);
    float* yu = take(B * I);
    void* act = take(B * I);          // SiLU(gate) * up, dtype
    float* q = take(B * H * D);       // rotated queries, float32
    float* yd = yo;                   // down's output reuses o's
    float* row = take(I > C ? I : C); // one row's projected outputs
    float* cosf = take(D);            // the rotary tables as float32
    float* sinf = take(D);
    float* head_row = take(D);        // one head's projected outputs
    float* kv_row = take(D);          // a key or value row before the cache
    for (int64_t d = 0; d < D; ++d) cosf[d] = dt.load(cos, d), sinf[d] = dt.load(sin, d);
    const int bf16_x = dt.bf16 ? 1 : 0;
    int done;

    // attention
    rms_norm(dt, x, b->norm[0], b->eps[0], B, C, h);
    const PnlWeight* qkv[3] = {b->proj[Q], b->proj[K], b->proj[V]};
    float* qkv_out[3] = {yq, yk, yv};
    if ((done = pnl_matmul_many(qkv, 3, h, bf16_x, B, qkv_out, threads, level)) != 0) return done;
    for (int64_t t = 0; t < B; ++t) {
        // keys and queries rotated, values as projected
        for (int64_t g = 0; g < KV; ++g) {
            const int64_t first = t * KV * D + g * D, at = ((t * KV + g) * b->max_len + pos) * D;
            projected_row(dt, yk + first, b->bias[K] ? b->bias[K] + g * D : nullptr, D, head_row);
            rotate_head(dt, head_row, cosf, sinf, D, kv_row);
            cache_row(b, b->keys, at, kv_row, D);
            projected_row(dt, yv + first, b->bias[V] ? b->bias[V] + g * D : nullptr, D, kv_row);
            cache_row(b, b->values, at, kv_row, D);
        }
        for (int64_t head = 0; head < H; ++head) {
            const int64_t first = t * H * D + head * D;
            projected_row(dt, yq + first, b->bias[Q] ? b->bias[Q] + head * D : nullptr, D, head_row);
            rotate_head(dt, head_row, cosf, sinf, D, q + first);
        }
    }
    // attention, one item per token and key/value head (and part of the context, where that
    // evens out the team's shares): on the team once the cache is long enough to be worth a
    // wake-up, else here
    Attention work{b, dt, attend_for(level), q, attn, L, D, H, KV, 1, L, nullptr};
    if (const int64_t parts = attention_parts(B, H, KV, D, L, threads)) {
        work.split = parts;
        work.span = (L + work.split - 1) / work.split;
        thread_local std::vector<float> outputs;  // the parts' outputs and statistics
        if (work.split > 1) {
            const int64_t floats_needed = B * KV * work.split * part_floats(work);
            if ((int64_t)outputs.size() < floats_needed) outputs.resize(floats_needed);
            work.parts = outputs.data();
        }
        pnl_parallel_for(attend_items, &work, B * KV * work.split, threads);
        if (work.split > 1) merge_parts(work, B);
    } else {
        attend_items(&work, 0, B * KV);
    }
    const PnlWeight* o = b->proj[O];
    if ((done = pnl_matmul_many(&o, 1, attn, bf16_x, B, &yo, threads, level)) != 0) return done;
    for (int64_t t = 0; t < B; ++t)
        add_projected(dt, (char*)x + t * C * dt.size(), yo + t * C, b->bias[O], C, row);

    // MLP
    rms_norm(dt, x, b->norm[1], b->eps[1], B, C, h);
    const PnlWeight* gate_up[2] = {b->proj[GATE], b->proj[UP]};
    float* gate_up_out[2] = {yg, yu};
    if ((done = pnl_matmul_many(gate_up, 2, h, bf16_x, B, gate_up_out, threads, level)) != 0) return done;
    for (int64_t t = 0; t < B; ++t) {
        float* gate = row;
        float* up = yu + t * I;  // projected in place: up's float32 sums are not read again
        projected_row(dt, yg + t * I, b->bias[GATE], I, gate);
        projected_row(dt, up, b->bias[UP], I, up);
        for (int64_t i = 0; i < I; ++i) gate[i] = dt.round(gate[i] / (1.0f + expf(-gate[i])));  // SiLU
        if (dt.bf16) {
            uint16_t* out = (uint16_t*)act + t * I;
            for (int64_t i = 0; i < I; ++i) out[i] = bf16_bits(gate[i] * up[i]);
        } else {
            float* out = (float*)act + t * I;
            for (int64_t i = 0; i < I; ++i) out[i] = gate[i] * up[i];
        }
    }
    const PnlWeight* down = b->proj[DOWN];
    if ((done = pnl_matmul_many(&down, 1, act, bf16_x, B, &yd, threads, level)) != 0) return done;
    for (int64_t t = 0; t < B; ++t)
        add_projected(dt, (char*)x + t * C * dt.size(), yd + t * C, b->bias[DOWN], C, row);
    return 0;
}

// attention_parts, for the tests: 0 (attention on the calling thread) or the parts of each
// key/value head's context a step of these sizes splits attention into; -2 for bad sizes.
PNL_API int64_t pnl_attention_parts(int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                    int64_t length, int threads) {
    if (batch < 1 || heads < 1 || kv_heads < 1 || head_dim < 1 || length < 1) return -2;
    return attention_parts(batch, heads, kv_heads, head_dim, length, threads);
}

}  // extern "C"

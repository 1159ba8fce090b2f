// The library's C entry points (called through ctypes): which ISA levels this CPU runs,
// y = x @ W^T over a thread pool of our own, and the dense weight back (a prefill's expansion).
//
// Whose threads: torch's own OpenMP workers where the process has them (runtime/cpu_kernels.py
// hands us that runtime's GOMP_parallel). A decode step interleaves our products with torch's
// operators, and after each operator torch's workers spin a while waiting for the next: a pool
// of our own beside them fought them for the cores (Qwen2.5-1.5B at 50% decoded at 0.57x dense
// with our pool, 1.30x with torch's workers told to sleep: bench/README.md). Linking OpenMP
// ourselves could load a second runtime (torch bundles its own libgomp), so we take the one
// already loaded. Without it (no OpenMP in the process) our own pool: its threads spin briefly
// after a call (decode calls come back-to-back), then sleep on a condition variable.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <thread>
#include <vector>

#include "kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

// The library is built with hidden symbols: only these entry points are visible to ctypes.
#define PNL_API __attribute__((visibility("default")))

// Weights per thread below which a product stays on the calling thread. Handing a part to
// torch's OpenMP workers (spinning between operators) costs a few microseconds: worth it from
// 32K weights (a 576 x 576 SmolLM2 layer on two threads: 57 -> 37 us). Waking our own pool costs
// far more (a 576 x 1536 layer ran 3x slower on two threads than on one). Settable (-1: by
// team): tests split small layers to check every thread's share. bench/README.md has the figures.
// Weights one call may take together (pnl_matmul_many: a block's gate and up, its q, k and v).
constexpr int kMostJobs = 8;
constexpr int64_t kTeamMinPartWeights = int64_t(1) << 15, kPoolMinPartWeights = int64_t(1) << 21;
std::atomic<int64_t> min_part_weights{-1};
// Tokens from which the AMX level multiplies in the tile unit (amx.cpp); fewer take the
// vdpbf16ps kernel. -1: by weight (pnl_amx_min_tokens). Settable: tests run both on small calls.
std::atomic<int> tile_min_tokens{-1};
// Nanoseconds spent in products since the last reset (pnl_kernel_nanoseconds): bench/decode_step.py
// splits a decode step with it.
std::atomic<int64_t> kernel_nanoseconds{0};

namespace {

// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), and Linux's leave to use the tiles'
// state: a process must ask for it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, feature 18)
// before its first tile instruction, or that instruction faults. Asked once.
// PNL_NO_AMX: the compiler could not build amx.cpp (setup.py), so no level uses it.
bool amx_usable() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__) && defined(SYS_arch_prctl) && !defined(PNL_NO_AMX)
    static const bool usable = [] {
        unsigned eax, ebx, ecx, edx;
        if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
        if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
        constexpr int kRequestPermission = 0x1023, kTileData = 18;
        return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
    }();
    return usable;
#else
    return false;
#endif
}

bool cpu_has(int level) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (level == PNL_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("popcnt");
    if (level == PNL_AVX512)
        return cpu_has(PNL_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vbmi2");
    if (level == PNL_AVX512_BF16)
        return cpu_has(PNL_AVX512) && __builtin_cpu_supports("avx512bf16");
    if (level == PNL_AMX_BF16) return cpu_has(PNL_AVX512_BF16) && amx_usable();
#endif
    return level == PNL_PORTABLE;
}

// The int8 kernel at `level`: vpdpbusd's from the AVX-512 level on a CPU with AVX512_VNNI, else
// vpmaddubsw's from the AVX2 level, else the scalar one (the same sums: slow, for correctness
// where the opt-in meets such a CPU).
PnlKernelInt8 int8_kernel_for(int level) {
#if defined(__x86_64__) || defined(_M_X64)
    if (level >= PNL_AVX512 && __builtin_cpu_supports("avx512vnni")) return pnl_rows_int8_avx512vnni;
    if (level >= PNL_AVX2) return pnl_rows_int8_avx2;
#endif
    (void)level;
    return pnl_rows_int8_portable;
}

// The activations' rounding that goes with int8_kernel_for(level): the same bits either way.
PnlQuantizeX quantize_x_for(int level) {
#if defined(__x86_64__) || defined(_M_X64)
    if (int8_kernel_for(level) == pnl_rows_int8_avx512vnni) return pnl_quantize_x_avx512;
    if (int8_kernel_for(level) == pnl_rows_int8_avx2) return pnl_quantize_x_avx2;
#endif
    return pnl_quantize_x;
}

PnlKernel kernel_for(int level) {
#if defined(__x86_64__) || defined(_M_X64)
    if (level >= PNL_AVX512) return pnl_rows_avx512;  // float32 activations
    if (level == PNL_AVX2) return pnl_rows_avx2;
#endif
    return pnl_rows_portable;
}

// A job's work on rows [begin, end): a kernel, or the expansion (expand_part below); or, where
// kernel_bf16 is set, that kernel on the bfloat16 activations xb.
struct Job {
    PnlKernel kernel;
    const PnlWeight* w;
    const float* xp;
    int tokens;
    float* y;
    int parts;
    size_t scratch_bytes;
    PnlKernelBf16 kernel_bf16 = nullptr;
    const uint16_t* xb = nullptr;
    PnlTask task = nullptr;  // set: items [0, items) split over the parts, no weight
    void* context = nullptr;
    int64_t items = 0;
    PnlKernelInt8 kernel_int8 = nullptr;  // set: this kernel on the int8 activations xq
    const PnlQuantX* xq = nullptr;
};

// A part's rows: contiguous, balanced by count, in multiples of 8 (whole cache lines of y); a
// task's items: contiguous, balanced by count.
void run_part(const Job& job, int part, uint8_t* scratch) {
    if (job.task) {
        const int64_t begin = job.items * part / job.parts, end = job.items * (part + 1) / job.parts;
        if (begin < end) job.task(job.context, begin, end);
        return;
    }
    const int64_t R = job.w->rows, unit = 8, units = (R + unit - 1) / unit;
    int64_t begin = units * part / job.parts * unit, end = units * (part + 1) / job.parts * unit;
    if (end > R) end = R;
    if (begin >= end) return;
    if (job.kernel_int8) job.kernel_int8(job.w, job.xq, job.y, begin, end, scratch);
    else if (job.kernel_bf16) job.kernel_bf16(job.w, job.xb, job.tokens, job.y, begin, end, scratch);
    else job.kernel(job.w, job.xp, job.tokens, job.y, begin, end, scratch);
}

uint8_t* grow(std::vector<uint8_t>& buffer, size_t bytes) {
    if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
    uintptr_t p = (uintptr_t)buffer.data();
    return (uint8_t*)((p + 63) & ~(uintptr_t)63);  // 64-byte aligned
}

class Pool {
  public:
    // Runs job's parts 1.. on workers and part 0 on the caller; returns when all are done.
    void run(const Job& job, uint8_t* caller_scratch) {
        std::lock_guard<std::mutex> one_call(call_);
        while ((int)workers_.size() < job.parts - 1) {
            workers_.emplace_back([this, id = (int)workers_.size() + 1] { work(id); });
            workers_.back().detach();
        }
        job_ = job;
        // Every worker checks in, also those without a part: none may still be reading job_
        // when the next call overwrites it.
        remaining_.store((int)workers_.size(), std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(mu_);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        run_part(job, 0, caller_scratch);
        for (int spin = 0; remaining_.load(std::memory_order_acquire) > 0; ++spin)
            if (spin > 64) std::this_thread::yield();
    }

  private:
    void work(int id) {
        std::vector<uint8_t> scratch;
        uint64_t seen = 0;
        for (;;) {
            uint64_t now = generation_.load(std::memory_order_acquire);
            for (int spin = 0; now == seen && spin < 2000; ++spin) {  // about a millisecond
                std::this_thread::yield();
                now = generation_.load(std::memory_order_acquire);
            }
            if (now == seen) {
                std::unique_lock<std::mutex> lock(mu_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
                now = generation_.load(std::memory_order_acquire);
            }
            seen = now;
            Job job = job_;
            if (id < job.parts) run_part(job, id, grow(scratch, job.scratch_bytes));
            remaining_.fetch_sub(1, std::memory_order_acq_rel);
        }
    }

    std::mutex call_, mu_;
    std::condition_variable wake_;
    std::vector<std::thread> workers_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> remaining_{0};
    Job job_{};
};

// The OpenMP runtime's entry for `#pragma omp parallel` (GOMP ABI, also exported by LLVM's and
// Intel's runtimes): runs fn(data) on num_threads threads, the caller one of them.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<GompParallel> gomp_parallel{nullptr};

// Parts are taken from a counter, not assigned by thread number: a worker that wakes late
// leaves its part to whoever is free. One call may hold several jobs (a block's q, k and v):
// their parts are numbered one job after the other, so the team wakes once for all of them.
struct TeamCall {
    const Job* jobs;
    int count;
    int parts;               // over all jobs
    size_t scratch_bytes;    // the most any job needs
    std::atomic<int> next{0};
};

void team_member(void* data) {
    TeamCall* call = static_cast<TeamCall*>(data);
    thread_local std::vector<uint8_t> scratch;
    uint8_t* mine = nullptr;
    for (int part; (part = call->next.fetch_add(1, std::memory_order_relaxed)) < call->parts;) {
        if (!mine) mine = grow(scratch, call->scratch_bytes);
        int job = 0;
        while (part >= call->jobs[job].parts) part -= call->jobs[job++].parts;
        run_part(call->jobs[job], part, mine);
    }
}

Pool& pool();

// Jobs' parts on the calling thread, torch's OpenMP workers (at most `threads` of them), or
// our pool (one job after the other).
void run_jobs(const Job* jobs, int count, int threads, uint8_t* caller_scratch) {
    int parts = 0;
    size_t scratch_bytes = 0;
    for (int j = 0; j < count; ++j) {
        parts += jobs[j].parts;
        if (jobs[j].scratch_bytes > scratch_bytes) scratch_bytes = jobs[j].scratch_bytes;
    }
    if (parts == count && (count == 1 || threads == 1)) {
        for (int j = 0; j < count; ++j) run_part(jobs[j], 0, caller_scratch);
        return;
    }
    if (GompParallel team = gomp_parallel.load(std::memory_order_acquire)) {
        TeamCall call{jobs, count, parts, scratch_bytes};
        team(team_member, &call, (unsigned)(parts < threads ? parts : threads), 0);
        return;
    }
    for (int j = 0; j < count; ++j) {
        if (jobs[j].parts == 1) run_part(jobs[j], 0, caller_scratch);
        else pool().run(jobs[j], caller_scratch);
    }
}

void run_parts(const Job& job, uint8_t* caller_scratch) { run_jobs(&job, 1, job.parts, caller_scratch); }

// The expansion as a job the pool splits by rows: `y` is the dense weight's buffer, in its dtype.
void expand_part(const PnlWeight* w, const float*, int, float* y, int64_t begin, int64_t end, uint8_t*) {
    pnl_expand_rows(w, y, begin, end);
}

#if defined(__x86_64__) || defined(_M_X64)
void expand_part_avx512bf16(const PnlWeight* w, const float*, int, float* y, int64_t begin, int64_t end, uint8_t*) {
    pnl_expand_rows_avx512bf16(w, y, begin, end);
}

void expand_part_avx512(const PnlWeight* w, const float*, int, float* y, int64_t begin, int64_t end,
                        uint8_t* scratch) {
    pnl_expand_rows_avx512(w, y, begin, end, scratch);
}
#endif

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its detached threads outlive main
    return *p;
}

float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Parts for one weight: at least 64 rows and min_part_weights weights each, at most `threads`.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PNL_NO_AMX)
int tile_tokens(const PnlWeight* w) {
    const int set = tile_min_tokens.load(std::memory_order_relaxed);
    return set > 0 ? set : pnl_amx_min_tokens(w);
}
#endif

int parts_for(const PnlWeight* w, int threads) {
    int parts = (int)((w->rows + 63) / 64);
    int64_t least = min_part_weights.load(std::memory_order_relaxed);
    if (least < 0) least = gomp_parallel.load(std::memory_order_relaxed) ? kTeamMinPartWeights : kPoolMinPartWeights;
    const int64_t by_size = least > 0 ? w->rows * w->cols_pad / least : parts;
    if (parts > by_size) parts = (int)by_size;
    if (parts > threads) parts = threads;
    return parts < 1 ? 1 : parts;
}

}  // namespace

// y_i (T, R_i) float32 = x (T, C) @ W_i^T for `count` weights of the same columns (a block's q,
// k and v, its gate and up), their parts handed to the team in one call per pass of 16 tokens.
int pnl_matmul_many(const PnlWeight* const* ws, int count, const void* x, int x_bf16, int64_t tokens,
                    float* const* ys, int threads, int level) {
    if (level < PNL_PORTABLE || level > PNL_AMX_BF16 || !cpu_has(level)) return -1;
    if (count < 1 || count > kMostJobs || !x || tokens < 1) return -2;
    for (int i = 0; i < count; ++i)
        if (!ws[i] || !ys[i] || ws[i]->cols_pad % 64 || ws[i]->cols > ws[i]->cols_pad ||
            ws[i]->cols != ws[0]->cols || ws[i]->cols_pad != ws[0]->cols_pad)
            return -2;
    if (threads < 1) threads = 1;
    const auto started = std::chrono::steady_clock::now();
    const int64_t cp = ws[0]->cols_pad, C = ws[0]->cols;
    thread_local std::vector<uint8_t> xbuf_bf16, xbuf_f32, xbuf_int8, scratch;
    for (int64_t t0 = 0; t0 < tokens; t0 += 16) {  // kernels take up to 16 tokens a pass
        const int nt = (int)(tokens - t0 < 16 ? tokens - t0 : 16);
        uint16_t* xb = nullptr;  // the pass's activations as bfloat16, padded, where a kernel takes them
        float* xp = nullptr;     // as float32, padded
        PnlQuantX xq{};          // as int8 blocks, for the weights that asked for them
        Job jobs[kMostJobs];
        size_t scratch_bytes = 0;
        for (int i = 0; i < count; ++i) {
            const PnlWeight* w = ws[i];
            float* y = ys[i] + t0 * w->rows;
            const int parts = parts_for(w, threads);
            if (w->x_int8 && pnl_int8_reads(w)) {
                if (!xq.q) {
                    const void* pass = (const uint8_t*)x + t0 * C * (x_bf16 ? sizeof(uint16_t) : sizeof(float));
                    xq = quantize_x_for(level)(pass, x_bf16, C, cp, nt, grow(xbuf_int8, pnl_quantize_x_bytes(cp, nt)));
                }
                jobs[i] = Job{nullptr, w, nullptr, nt, y, parts, pnl_int8_scratch_bytes(w, nt)};
                jobs[i].kernel_int8 = int8_kernel_for(level);
                jobs[i].xq = &xq;
                if (jobs[i].scratch_bytes > scratch_bytes) scratch_bytes = jobs[i].scratch_bytes;
                continue;
            }
#if defined(__x86_64__) || defined(_M_X64)
            // bfloat16 activations stay bfloat16 for the vdpbf16ps kernel, where it reads this weight
            if (level >= PNL_AVX512_BF16 && x_bf16 && pnl_avx512bf16_reads(w)) {
                if (!xb) {
                    xb = (uint16_t*)grow(xbuf_bf16, (size_t)nt * cp * sizeof(uint16_t));
                    for (int t = 0; t < nt; ++t) {
                        memcpy(xb + t * cp, (const uint16_t*)x + (t0 + t) * C, C * sizeof(uint16_t));
                        memset(xb + t * cp + C, 0, (cp - C) * sizeof(uint16_t));
                    }
                }
                // scratch: the pass's activations re-laid out step by step (avx512bf16.cpp, amx.cpp)
#ifndef PNL_NO_AMX
                if (level == PNL_AMX_BF16 && pnl_amx_reads(w) && nt >= tile_tokens(w))
                    jobs[i] = Job{nullptr, w, nullptr, nt, y, parts, pnl_amx_scratch_bytes(cp, nt) + 256, pnl_rows_amx, xb};
                else
#endif
                    jobs[i] = Job{nullptr, w, nullptr, nt, y, parts, (size_t)16 * 2 * cp + 256, pnl_rows_avx512bf16, xb};
                if (jobs[i].scratch_bytes > scratch_bytes) scratch_bytes = jobs[i].scratch_bytes;
                continue;
            }
#endif
            if (!xp) {
                xp = (float*)grow(xbuf_f32, (size_t)nt * cp * sizeof(float));
                for (int t = 0; t < nt; ++t) {
                    float* dst = xp + t * cp;
                    if (x_bf16) {
                        const uint16_t* src = (const uint16_t*)x + (t0 + t) * C;
                        for (int64_t c = 0; c < C; ++c) dst[c] = bf16_to_float(src[c]);
                    } else {
                        memcpy(dst, (const float*)x + (t0 + t) * C, C * sizeof(float));
                    }
                    memset(dst + C, 0, (cp - C) * sizeof(float));
                }
            }
            // scratch: a pass's activations re-laid out (up to 16 tokens), then a row's codes as bytes
            jobs[i] = Job{kernel_for(level), w, xp, nt, y, parts, (size_t)(16 * 4 + 1) * cp + 256};
            if (jobs[i].scratch_bytes > scratch_bytes) scratch_bytes = jobs[i].scratch_bytes;
        }
        run_jobs(jobs, count, threads, grow(scratch, scratch_bytes));
    }
    kernel_nanoseconds.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started).count(),
        std::memory_order_relaxed);
    return 0;
}


extern "C" {

PNL_API int pnl_abi_version(void) { return 10; }

// Which int8 kernel runs at `level`: 1 the AVX512_VNNI one, 2 the AVX2 one, 0 the scalar one.
PNL_API int pnl_int8_kernel(int level) {
    if (!cpu_has(level)) return 0;
    const PnlKernelInt8 kernel = int8_kernel_for(level);
#if defined(__x86_64__) || defined(_M_X64)
    if (kernel == pnl_rows_int8_avx512vnni) return 1;
    if (kernel == pnl_rows_int8_avx2) return 2;
#endif
    (void)kernel;
    return 0;
}

// Products of fewer weights per thread than this stay on the calling thread (-1: the team's
// default); returns the old value.
PNL_API int64_t pnl_set_min_part_weights(int64_t weights) { return min_part_weights.exchange(weights); }

// Parts run on this OpenMP runtime's threads (its GOMP_parallel), or on our own pool (null).
PNL_API void pnl_use_openmp(void* gomp_parallel_entry) {
    gomp_parallel.store((GompParallel)gomp_parallel_entry, std::memory_order_release);
}

// Nanoseconds the products took since the last reset; `reset` 1 starts the count again.
PNL_API int64_t pnl_kernel_nanoseconds(int reset) {
    return reset ? kernel_nanoseconds.exchange(0) : kernel_nanoseconds.load();
}

// Tokens per call from which the AMX level uses the tile kernel (< 1: by weight, the default);
// returns the old value.
PNL_API int pnl_set_tile_min_tokens(int tokens) { return tile_min_tokens.exchange(tokens < 1 ? -1 : tokens); }

PNL_API int pnl_level_supported(int level) { return cpu_has(level) ? 1 : 0; }

PNL_API int pnl_best_level(void) {
    for (int level = PNL_AMX_BF16; level > PNL_PORTABLE; --level)
        if (cpu_has(level)) return level;
    return PNL_PORTABLE;
}

// y (T, R) float32 = x (T, C) @ W^T; x float32 (x_bf16 = 0) or bfloat16 (1), rows contiguous.
// Returns 0, or -1 for a level this CPU lacks, -2 for bad arguments.
PNL_API int pnl_matmul(const PnlWeight* w, const void* x, int x_bf16, int64_t tokens, float* y, int threads,
                       int level) {
    return pnl_matmul_many(&w, 1, x, x_bf16, tokens, &y, threads, level);
}

// out (R, C) = the dense weight in its dtype (float32, or float16 / bfloat16 bits), bit for bit
// the format's decompression: vectorized at the AVX-512 levels for the weights their kernels
// read, scalar otherwise. Returns 0, or -1 for a level this CPU lacks, -2 for bad arguments.
PNL_API int pnl_expand(const PnlWeight* w, void* out, int threads, int level) {
    if (level < PNL_PORTABLE || level > PNL_AMX_BF16 || !cpu_has(level)) return -1;
    if (!w || !out || w->cols_pad % 64 || w->cols > w->cols_pad) return -2;
    if (threads < 1) threads = 1;
    int parts = (int)((w->rows + 63) / 64);
    if (parts > threads) parts = threads;
    if (parts < 1) parts = 1;
    Job job{expand_part, w, nullptr, 0, (float*)out, parts, 0};
#if defined(__x86_64__) || defined(_M_X64)
    if (level >= PNL_AVX512_BF16 && pnl_avx512bf16_expands(w)) {
        job.kernel = expand_part_avx512bf16;
    } else if (level >= PNL_AVX512 && pnl_vector_reads(w, 32)) {
        job.kernel = expand_part_avx512;
        job.scratch_bytes = (size_t)w->cols_pad + 128;  // a row's codes spread to bytes
    }
#endif
    thread_local std::vector<uint8_t> scratch;
    run_parts(job, grow(scratch, job.scratch_bytes));
    return 0;
}

// task(context, begin, end) over items [0, items) split in up to `threads` contiguous parts,
// on the thread team as the products are; returns when every part is done.
void pnl_parallel_for(PnlTask task, void* context, int64_t items, int threads) {
    if (items < 1) return;
    int parts = (int)(items < threads ? items : threads);
    if (parts < 1) parts = 1;
    Job job{nullptr, nullptr, nullptr, 0, nullptr, parts, 0};
    job.task = task;
    job.context = context;
    job.items = items;
    thread_local std::vector<uint8_t> scratch;
    run_jobs(&job, 1, parts, grow(scratch, 0));
}

namespace {
struct Rounding {
    const uint8_t* x;
    size_t row_bytes;
    int x_bf16;
    int64_t cols;
    float* out;
    PnlQuantizeX quantize;
};

void round_rows(void* context, int64_t begin, int64_t end) {
    const Rounding& job = *(const Rounding*)context;
    const int64_t cp = (job.cols + 63) / 64 * 64;
    thread_local std::vector<uint8_t> buffer;
    uint8_t* mine = grow(buffer, pnl_quantize_x_bytes(cp, 1));
    for (int64_t t = begin; t < end; ++t) {
        const PnlQuantX xq = job.quantize(job.x + t * job.row_bytes, job.x_bf16, job.cols, cp, 1, mine);
        float* row = job.out + t * job.cols;
        for (int64_t c = 0; c < job.cols; ++c) row[c] = (float)xq.q[c] * xq.scale[c / 64];
    }
}
}  // namespace

// out (T, C) float32 = x (T, C) as the int8 kernels read it, q * scale per block of
// PNL_INT8_BLOCK columns (runtime/int8_activations.py's round_activations, the same bits): the
// prefill of a layer with int8 activations rounds its activations before the expanded product,
// and in torch's operations that rounding took a third of such a prefill. Tokens split over
// `threads`. Returns 0, or -1 for a level this CPU lacks, -2 for bad arguments.
PNL_API int pnl_round_activations(const void* x, int x_bf16, int64_t tokens, int64_t cols, float* out, int threads,
                                  int level) {
    if (level < PNL_PORTABLE || level > PNL_AMX_BF16 || !cpu_has(level)) return -1;
    if (!x || !out || tokens < 1 || cols < 1) return -2;
    Rounding job{(const uint8_t*)x, (size_t)cols * (x_bf16 ? sizeof(uint16_t) : sizeof(float)), x_bf16, cols, out,
                 quantize_x_for(level)};
    pnl_parallel_for(round_rows, &job, tokens, threads < 1 ? 1 : threads);
    return 0;
}

// Windows links a Python extension only with this symbol; ctypes never calls it.
PNL_API void* PyInit__prunellm_cpu(void) { return 0; }

}  // extern "C"

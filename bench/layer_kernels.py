"""One linear layer at decode on this CPU: dense torch against the native kernels reading the
compressed layouts (runtime/cpu_kernels.py).

    python bench/layer_kernels.py [--threads 2] [--tokens 1 2 4 8 16] [--working-set-mib 512] \
        [--kernel-x bfloat16|float32] [--shapes llama-7b|qwen2.5-1.5b] \
        [--out bench/results/layer_kernels.json]

Per layer shape (LLaMA-7B's: 4096x4096 attention, 11008x4096 gate/up, 4096x11008 down; or with
`--shapes qwen2.5-1.5b` the shapes of the whole-model benchmark's Qwen2.5-Coder-1.5B, whose
rows are shorter and whose down projection's longer) and token count: dense float32 and
bfloat16 through torch's F.linear (the faster is "dense"), dense bfloat16 through the kernels
(read in place, as `prunellm.load` runs a dense layer at decode), then each layout through the
kernels (activations bfloat16, as a bfloat16 forward hands them, which the avx512bf16 level
multiplies without widening; --kernel-x float32 for float32 ones),
with its time, speed-up over dense, bytes read, GB/s, and the share of this machine's read
bandwidth (measured here: torch summing a 1 GiB buffer on the same threads). Each compressed
layout is also timed as the runtime's alternative to its kernel, the weight expanded for the
call then torch's product ("expanded"), and the dense kernel against torch's bfloat16 product:
the crossover table says up to how many tokens each kernel wins at every shape, the figures
runtime/token_limits.py holds. Before each layout's kernel at each token count the dense
kernel is timed again, so that a layout's speed-up over the dense kernel ("× dense kernel",
the 1-token table beside the byte limit) comes from one spell of a VM whose memory bandwidth
moves between levels within minutes. Each row cycles through copies of its layer in distinct memory, at least
--working-set-mib in all, as a model's layers follow one another: a single layer timed in a
loop would sit in the last-level cache (32 MiB on the machine of bench/README.md) and flatter
every figure. "of bytes" is the byte-limited time (bytes / bandwidth) over the measured one: 1.0
means the kernel streams as fast as memory allows. Weights are random on the layouts'
patterns: kernel speed does not depend on the values; quantized layers are stored bfloat16, as
`--save-dtype bfloat16` stores them. The quantized layouts run again with int8 activations
(runtime/int8_activations.py, the opt-in int8 kernel: rows named "(int8 activations)"; their
alternative rounds the activations before the expanded product). `--small` runs tiny shapes (a
smoke test); `--only TEXT` the layouts whose name holds TEXT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunellm.formats.compressed.layer import compress_weight
from prunellm.runtime import cpu_kernels
from prunellm.runtime.bench_infer import _cpu_name, cpu_features
from prunellm.runtime.int8_activations import round_activations
from prunellm.solvers.quant import QuantGrid

SHAPES = {"attn 4096x4096": (4096, 4096), "up 11008x4096": (11008, 4096), "down 4096x11008": (4096, 11008)}
QWEN_SHAPES = {"q/o 1536x1536": (1536, 1536), "k/v 256x1536": (256, 1536), "gate/up 8960x1536": (8960, 1536),
               "down 1536x8960": (1536, 8960)}
SHAPE_SETS = {"llama-7b": SHAPES, "qwen2.5-1.5b": QWEN_SHAPES}
SMALL = {"small 264x384": (264, 384), "small 520x1024": (520, 1024)}
LAYOUTS = ["50% bitmask bf16", "70% bitmask bf16", "2:4 bf16", "50% bitmask + 4-bit g128", "2:4 + 4-bit g128",
           "4-bit g128", "8-bit g128"]
# The quantized layouts again with int8 activations (runtime/int8_activations.py: the opt-in
# int8 kernel, not exact), each row named with INT8.
INT8 = " (int8 activations)"
INT8_LAYOUTS = ["50% bitmask + 4-bit g128", "2:4 + 4-bit g128", "4-bit g128", "8-bit g128"]


def cpu_description() -> dict[str, str]:
    """The CPU, its features, and the instruction set torch's own products were allowed: an
    AVX2-only CPU's run can be imitated on a newer one by capping torch (ATEN_CPU_CAPABILITY=avx2,
    ONEDNN_MAX_CPU_ISA=AVX2) and the kernels (PRUNELLM_CPU_KERNEL=avx2), and the rows say so."""
    torch_isa = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        torch_isa += f", oneDNN capped at {os.environ['ONEDNN_MAX_CPU_ISA']}"
    return {"model": _cpu_name() or platform.processor() or platform.machine(), "flags": cpu_features(),
            "torch_isa": torch_isa}


def timed(fn, budget_s: float = 0.4, min_runs: int = 5) -> float:
    """Median seconds of fn() after a warm-up, over about budget_s of runs."""
    fn()
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    runs = max(min_runs, min(200, int(budget_s / once)))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def read_bandwidth(gib: float) -> float:
    """Bytes per second torch's sum streams from a buffer larger than every cache."""
    buffer = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    seconds = min(timed(lambda: buffer.sum(), budget_s=1.0, min_runs=3) for _ in range(2))
    return buffer.numel() * 4 / seconds


def _grid(rows: int, cols: int, bits: int, group: int, gen: torch.Generator) -> QuantGrid:
    scale = torch.rand(rows, cols // group, generator=gen) * 0.01 + 1e-3
    zero = torch.full((rows, cols // group), float(2 ** (bits - 1)))
    return QuantGrid(bits, False, group, scale, zero)


def layer(name: str, rows: int, cols: int, seed: int = 0):
    """A compressed layer of `name`'s layout, with random values on its pattern."""
    gen = torch.Generator().manual_seed(seed)
    bits = 8 if name.startswith("8-bit") else 4 if "4-bit" in name else None
    if bits is None:
        weight = torch.randn(rows, cols, generator=gen)
    else:
        grid = _grid(rows, cols, bits, 128, gen)
        codes = torch.randint(0, 2**bits, (rows, cols), generator=gen).float()
        scale, zero = grid.expand(cols)
    if name.startswith("2:4"):
        keep = torch.rand(rows, cols // 4, 4, generator=gen).argsort(dim=-1)[..., :2]
        pattern = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(2, keep, True).reshape(rows, cols)
    elif "bitmask" in name:
        pattern = torch.rand(rows, cols, generator=gen) >= float(name.split("%")[0]) / 100
    else:
        pattern = torch.ones(rows, cols, dtype=torch.bool)
    if bits is None:
        weight = torch.where(pattern, weight, 0.0).to(torch.bfloat16)
        return compress_weight(weight, nm=(2, 4) if name.startswith("2:4") else None)
    codes = torch.where(pattern, codes, zero)  # a pruned weight is its zero point's code
    # code - zero times a scale, rounded to bfloat16, still rounds back to its code (|code - zero|
    # <= 128 and bfloat16's relative error 2^-9 move it by at most a quarter)
    weight = (scale * (codes - zero)).to(torch.bfloat16)
    return compress_weight(weight, grid, nm=(2, 4) if name.startswith("2:4") else None)


def copies_for(nbytes: int, working_set: int) -> int:
    """Copies of a layer of `nbytes` that make up the working set (at least 2)."""
    return max(2, -(-working_set // max(nbytes, 1)))


def cycled(fn, weights: list) -> float:
    """Median seconds of one call of fn, cycling through `weights` (distinct memory)."""
    return timed(lambda: [fn(w) for w in weights]) / len(weights)


def run(shapes: dict[str, tuple[int, int]], tokens: list[int], threads: int, bandwidth: float,
        working_set: int, kernel_x: torch.dtype = torch.bfloat16, only: str | None = None) -> list[dict]:
    results = []
    names = [n for n in LAYOUTS if only is None or only in n] + \
        [n + INT8 for n in INT8_LAYOUTS if only is None or only in n + INT8]
    for shape_name, (rows, cols) in shapes.items():
        base = torch.randn(rows, cols)
        fp32 = [base.clone() for _ in range(copies_for(rows * cols * 4, working_set))]
        bf16 = [base.to(torch.bfloat16) for _ in range(copies_for(rows * cols * 2, working_set))]
        in_place = [cpu_kernels.prepare_dense(w) for w in bf16]  # the dense bf16 copies, read by the kernels
        xs = {count: torch.randn(count, cols) for count in tokens}
        timed_rows: dict[int, list[tuple[str, float, int]]] = {}
        alternative: dict[tuple[int, str], float] = {}
        for count, x in xs.items():
            x16 = x.to(torch.bfloat16)
            xk = x.to(kernel_x)  # the kernels' activations: a bfloat16 forward hands them bfloat16
            t16 = cycled(lambda w: F.linear(x16, w), bf16)
            timed_rows[count] = [("dense fp32 (torch)", cycled(lambda w: F.linear(x, w), fp32), rows * cols * 4),
                                 ("dense bf16 (torch)", t16, rows * cols * 2),
                                 ("dense bf16 (kernel)", cycled(lambda w: cpu_kernels.matmul(xk, w), in_place),
                                  rows * cols * 2)]
            # the kernel's alternative in the runtime: torch's product on the dense weight, or for a
            # compressed layer the weight expanded for the call first (runtime/linear.py)
            alternative[count, "dense bf16 (kernel)"] = t16
        # One layout's copies at a time (each fills the working set): all of them at once took
        # 16 GiB at 1 GiB each.
        for name in names:
            packed = layer(name.removesuffix(INT8), rows, cols)
            first = cpu_kernels.prepare(packed.spec, packed.tensors)
            # each prepare repacks into buffers of its own: distinct memory per copy
            weights = [first] + [cpu_kernels.prepare(packed.spec, packed.tensors)
                                 for _ in range(copies_for(first.nbytes, working_set) - 1)]
            for native in weights:
                native.int8_activations = name.endswith(INT8)
            for count, x in xs.items():
                xk = x.to(kernel_x)
                # the dense kernel again just before the layout: on a VM whose memory moves between
                # levels within minutes, the dense rows timed at the shape's start can fall in
                # another spell than this row, and the pair keeps the ratio to one spell
                paired = cycled(lambda w: cpu_kernels.matmul(xk, w), in_place)
                timed_rows[count].append((name, cycled(lambda w: cpu_kernels.matmul(xk, w), weights),
                                          weights[0].nbytes, paired))
                # with int8 activations the expanded call rounds them first too (runtime/linear.py)
                xa = round_activations(xk).to(xk.dtype) if name.endswith(INT8) else xk
                alternative[count, name] = cycled(
                    lambda w: F.linear(xa, cpu_kernels.expand_for_call(w).to(xk.dtype)), weights)
            del weights, first
        for count, measured in timed_rows.items():
            t32, t16 = measured[0][1], measured[1][1]
            dense = min(t32, t16)
            dense_bytes = rows * cols * (4 if t32 <= t16 else 2)
            for name, seconds, nbytes, *paired in measured:
                results.append({"shape": shape_name, "rows": rows, "cols": cols, "tokens": count, "layout": name,
                                "ms": seconds * 1e3, "speedup": dense / seconds, "bytes": nbytes,
                                "gb_s": nbytes / seconds / 1e9, "of_bandwidth": nbytes / seconds / bandwidth,
                                "dense_bytes": dense_bytes, "threads": threads})
                if paired:  # the dense kernel (bfloat16 in place) timed just before this row
                    results[-1]["paired_dense_kernel_ms"] = paired[0] * 1e3
                if (count, name) in alternative:
                    results[-1]["alternative_ms"] = alternative[count, name] * 1e3
        del fp32, bf16, in_place
    return results


def print_table(results: list[dict], cpu: dict[str, str], bandwidth: float, isa: str) -> None:
    print(f"CPU: {cpu['model']}; {torch.get_num_threads()} threads; kernels: {isa}")
    print(f"features: {cpu['flags']}")
    print(f"torch's products: {cpu['torch_isa']}")
    print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s (torch sum over a large buffer)")
    header = f"{'shape':17s} {'T':>3s} {'layout':45s} {'ms':>8s} {'vs dense':>8s} {'MB':>7s} {'GB/s':>6s} {'of bw':>6s}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['shape']:17s} {r['tokens']:3d} {r['layout']:45s} {r['ms']:8.3f} {r['speedup']:7.2f}x "
              f"{r['bytes'] / 1e6:7.1f} {r['gb_s']:6.1f} {r['of_bandwidth']:6.2f}")


def crossovers(results: list[dict]) -> dict[str, tuple[dict[int, tuple[float, float]], int]]:
    """Per kernel layout: its speed-up over the runtime's alternative at each token count (the
    range over shapes), and the largest count up to which it wins at every shape and every
    smaller count (0: it never does)."""
    out = {}
    for layout in dict.fromkeys(r["layout"] for r in results if "alternative_ms" in r):
        ratios: dict[int, list[float]] = {}
        for r in results:
            if r["layout"] == layout:
                ratios.setdefault(r["tokens"], []).append(r["alternative_ms"] / r["ms"])
        limit = 0
        for count in sorted(ratios):
            if min(ratios[count]) <= 1.0:
                break
            limit = count
        out[layout] = ({c: (min(v), max(v)) for c, v in sorted(ratios.items())}, limit)
    return out


def family_limits(results: list[dict]) -> dict[str, int]:
    """The crossovers by runtime/token_limits.py's families: the smallest over their layouts."""
    limits: dict[str, int] = {}
    for layout, (_, limit) in crossovers(results).items():
        key = ("int8 activations" if layout.endswith(INT8) else "dense" if layout.startswith("dense")
               else "8-bit" if "8-bit" in layout
               else "4-bit" if "4-bit" in layout else "values")
        limits[key] = min(limits.get(key, limit), limit)
    return limits


def paired_table(results: list[dict], shapes: list[str]) -> list[str]:
    """1 token: each compressed layout's speed-up over the dense kernel timed just before it, and
    the byte limit (the dense bfloat16 bytes over the layout's); no lines for results without
    the pairs (runs before they were timed)."""
    at = {(r["shape"], r["layout"]): r for r in results if r["tokens"] == 1 and "paired_dense_kernel_ms" in r}
    if not at:
        return []
    lines = ["", "| layout (1 token) | " + " | ".join(f"{s.split()[1]} × dense kernel (limit)" for s in shapes)
             + " |",
             "| --- | " + " | ".join("---:" for _ in shapes) + " |"]
    for layout in dict.fromkeys(layout for _, layout in at):
        cells = []
        for shape in shapes:
            r = at.get((shape, layout))
            if r is None:
                cells.append("–")
                continue
            limit = r["rows"] * r["cols"] * 2 / r["bytes"]  # dense bfloat16 bytes over the layout's
            cells.append(f"{r['paired_dense_kernel_ms'] / r['ms']:.2f}× ({limit:.2f})")
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: list[dict]) -> str:
    """bench/README.md's two tables: 1 token per shape, and the speed-up range by token count."""
    shapes = list(dict.fromkeys(r["shape"] for r in results))
    layouts = list(dict.fromkeys(r["layout"] for r in results))
    counts = sorted({r["tokens"] for r in results})
    at = {(r["shape"], r["tokens"], r["layout"]): r for r in results}
    lines = ["| layout | " + " | ".join(f"{s.split()[1]} ms (×)" for s in shapes) + " | GB/s | of bandwidth |",
             "| --- | " + " | ".join("---:" for _ in shapes) + " | ---: | ---: |"]
    for layout in layouts:
        rows = [at[(s, 1, layout)] for s in shapes if (s, 1, layout) in at]
        if not rows:
            continue
        cells = " | ".join(f"{r['ms']:.2f} ({r['speedup']:.2f}×)" for r in rows)
        gb = [r["gb_s"] for r in rows]
        share = [r["of_bandwidth"] for r in rows]
        lines.append(f"| {layout} | {cells} | {min(gb):.0f}-{max(gb):.0f} | {min(share):.2f}-{max(share):.2f} |")
    lines += paired_table(results, shapes)
    lines += ["", "| layout | " + " | ".join(f"{c} token{'s' if c > 1 else ''}" for c in counts) + " |",
              "| --- | " + " | ".join("---:" for _ in counts) + " |"]
    for layout in layouts:
        cells = []
        for count in counts:
            ups = [at[(s, count, layout)]["speedup"] for s in shapes if (s, count, layout) in at]
            cells.append(f"{min(ups):.2f}-{max(ups):.2f}×" if ups else "–")
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    table = crossovers(results)
    if table:
        lines += ["", "| kernel over its alternative | " + " | ".join(f"{c} tok" for c in counts)
                  + " | wins up to |", "| --- | " + " | ".join("---:" for _ in counts) + " | ---: |"]
        for layout, (ratios, limit) in table.items():
            cells = [f"{ratios[c][0]:.2f}-{ratios[c][1]:.2f}×" if c in ratios else "–" for c in counts]
            lines.append(f"| {layout} | " + " | ".join(cells) + f" | {limit} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--working-set-mib", type=int, default=512,
                        help="MiB of distinct copies each row cycles through (beyond the last-level cache)")
    parser.add_argument("--kernel-x", choices=["bfloat16", "float32"], default="bfloat16",
                        help="the activations' dtype in the kernels' rows (torch's dense rows take both)")
    parser.add_argument("--shapes", choices=sorted(SHAPE_SETS), default="llama-7b",
                        help="whose layer shapes: LLaMA-7B's (issue 28's targets) or the Qwen model's of "
                        "bench/cpu_model.py")
    parser.add_argument("--only", help="only the layouts whose name holds this text (the dense rows always run)")
    parser.add_argument("--small", action="store_true", help="tiny shapes and buffer: a smoke test, not figures")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="print bench/README.md's tables from this JSON (no run)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())["results"]))
        return
    if not cpu_kernels.available():
        raise SystemExit("native CPU kernels not built: reinstall prunellm with a C++ compiler")
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    bandwidth = read_bandwidth(0.0625 if args.small else 1.0)
    working_set = (1 if args.small else args.working_set_mib) * 2**20
    shapes = SMALL if args.small else SHAPE_SETS[args.shapes]
    results = run(shapes, args.tokens, args.threads, bandwidth, working_set, getattr(torch, args.kernel_x), args.only)
    print_table(results, cpu, bandwidth, f"{cpu_kernels.isa()}, {args.kernel_x} activations")
    print("\nkernel over its alternative (expanded + torch; torch bf16 for the dense kernel), "
          "tokens up to which it wins:")
    for layout, (ratios, limit) in crossovers(results).items():
        print(f"  {layout:45s} " + " ".join(f"{c}:{lo:.2f}-{hi:.2f}" for c, (lo, hi) in ratios.items())
              + f"  -> {limit}")
    print(f"by family (runtime/token_limits.py, {args.kernel_x} activations on {cpu_kernels.isa()}): "
          f"{family_limits(results)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "kernels": cpu_kernels.isa(),
                                        "kernel_x": args.kernel_x, "shapes": "small" if args.small else args.shapes,
                                        "read_bandwidth_gb_s": bandwidth / 1e9, "small": args.small,
                                        "working_set_mib": working_set / 2**20,
                                        "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

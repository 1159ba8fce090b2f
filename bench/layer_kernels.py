"""One linear layer at decode on this CPU: dense torch against the native kernels reading the
compressed layouts (runtime/cpu_kernels.py).

    python bench/layer_kernels.py [--threads 2] [--tokens 1 4 16] [--out bench/results/layer_kernels.json]

Per layer shape (LLaMA-7B's: 4096x4096 attention, 11008x4096 gate/up, 4096x11008 down) and
token count: dense float32 and bfloat16 through torch's F.linear (the faster is "dense"), then
each layout through the kernels, with its time, speed-up over dense, bytes read, GB/s, and the
share of this machine's read bandwidth (measured here: torch summing a 1 GiB buffer on the
same threads). "of bytes" is the byte-limited time (bytes / bandwidth) over the measured one:
1.0 means the kernel streams as fast as memory allows. Weights are random on the layouts'
patterns: kernel speed does not depend on the values. `--small` runs tiny shapes (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunellm.formats.compressed.layer import compress_weight
from prunellm.runtime import cpu_kernels
from prunellm.solvers.quant import QuantGrid

SHAPES = {"attn 4096x4096": (4096, 4096), "up 11008x4096": (11008, 4096), "down 4096x11008": (4096, 11008)}
SMALL = {"small 264x384": (264, 384), "small 520x1024": (520, 1024)}
LAYOUTS = ["50% bitmask bf16", "70% bitmask bf16", "2:4 bf16", "50% bitmask + 4-bit g128", "2:4 + 4-bit g128",
           "4-bit g128", "8-bit g128"]


def cpu_description() -> dict[str, str]:
    info = {"model": platform.processor() or platform.machine(), "flags": ""}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["flags"] == "":
                info["model"] = value.strip()
            if key.strip() in ("flags", "Features"):
                wanted = ("avx2", "fma", "f16c", "avx512", "amx", "asimd", "sve", "bf16")
                info["flags"] = " ".join(sorted(f for f in value.split() if f.startswith(wanted)))
                break
    except OSError:
        pass
    return info


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
    return compress_weight(scale * (codes - zero), grid, nm=(2, 4) if name.startswith("2:4") else None)


def run(shapes: dict[str, tuple[int, int]], tokens: list[int], threads: int, bandwidth: float) -> list[dict]:
    results = []
    for shape_name, (rows, cols) in shapes.items():
        dense_fp32 = torch.randn(rows, cols)
        dense_bf16 = dense_fp32.to(torch.bfloat16)
        natives = {}
        for name in LAYOUTS:
            packed = layer(name, rows, cols)
            natives[name] = cpu_kernels.prepare(packed.spec, packed.tensors)
        for count in tokens:
            x = torch.randn(count, cols)
            x16 = x.to(torch.bfloat16)
            fp32 = timed(lambda: F.linear(x, dense_fp32))
            bf16 = timed(lambda: F.linear(x16, dense_bf16))
            dense = min(fp32, bf16)
            dense_bytes = rows * cols * (4 if fp32 <= bf16 else 2)
            rows_out = [("dense fp32 (torch)", fp32, rows * cols * 4), ("dense bf16 (torch)", bf16, rows * cols * 2)]
            for name, native in natives.items():
                seconds = timed(lambda: cpu_kernels.matmul(x, native))
                rows_out.append((name, seconds, native.nbytes))
            for name, seconds, nbytes in rows_out:
                results.append({"shape": shape_name, "rows": rows, "cols": cols, "tokens": count, "layout": name,
                                "ms": seconds * 1e3, "speedup": dense / seconds, "bytes": nbytes,
                                "gb_s": nbytes / seconds / 1e9, "of_bandwidth": nbytes / seconds / bandwidth,
                                "dense_bytes": dense_bytes, "threads": threads})
    return results


def print_table(results: list[dict], cpu: dict[str, str], bandwidth: float, isa: str) -> None:
    print(f"CPU: {cpu['model']}; {torch.get_num_threads()} threads; kernels: {isa}")
    print(f"features: {cpu['flags']}")
    print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s (torch sum over a large buffer)")
    header = f"{'shape':17s} {'T':>3s} {'layout':26s} {'ms':>8s} {'vs dense':>8s} {'MB':>7s} {'GB/s':>6s} {'of bw':>6s}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['shape']:17s} {r['tokens']:3d} {r['layout']:26s} {r['ms']:8.3f} {r['speedup']:7.2f}x "
              f"{r['bytes'] / 1e6:7.1f} {r['gb_s']:6.1f} {r['of_bandwidth']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--small", action="store_true", help="tiny shapes and buffer: a smoke test, not figures")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("native CPU kernels not built: reinstall prunellm with a C++ compiler")
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    bandwidth = read_bandwidth(0.0625 if args.small else 1.0)
    results = run(SMALL if args.small else SHAPES, args.tokens, args.threads, bandwidth)
    print_table(results, cpu, bandwidth, cpu_kernels.isa())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "kernels": cpu_kernels.isa(),
                                        "read_bandwidth_gb_s": bandwidth / 1e9, "small": args.small,
                                        "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

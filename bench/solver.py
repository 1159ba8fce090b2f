"""Time one layer's solve by each sweep (reference, blocked, Triton) on seeded layer problems.

Layer problems at LLaMA-7B shapes (rows x columns = out x in features): 4096x4096 (q/k/v/o),
11008x4096 (gate/up), 4096x11008 (down_proj). W is Gaussian; H = 2/T XᵀX of T synthetic inputs
with per-feature scales spread over two orders of magnitude, a few outlier features and a
shared low-rank part, as LLM activations have. For each variant (50%, 2:4, 50% + 4-bit per row)
prints each sweep's solve seconds (the whole `sparsegpt` call, inverse Hessian included; best of
--repeats after a warm-up) and relative layer error tr((W-Ŵ)H(W-Ŵ)ᵀ)/tr(WHWᵀ), and the speed-up.
Sweeps: "reference" (the column loop, as the authors' code), "blocked" (the CPU path), "fast"
(what prunellm runs: the Triton kernel on CUDA where it covers the case, else blocked).

    python bench/solver.py                                    # LLaMA-7B shapes, CPU or CUDA
    python bench/solver.py --shapes 576x576,1536x576,576x1536 # SmolLM2-135M's shapes
    python bench/solver.py --device cuda --json bench/results/solver_h100.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunellm.solvers import SparseGPTConfig, relative_layer_error, sparsegpt

from smollm2_table import machine as cpu_machine  # noqa: E402  (bench/ is first on sys.path)

VARIANTS = {
    "50%": SparseGPTConfig(sparsity=0.5),
    "2:4": SparseGPTConfig(nm=(2, 4)),
    "50% + 4-bit": SparseGPTConfig(sparsity=0.5, bits=4),
}


def layer_problem(rows: int, cols: int, tokens: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, H): W (rows, cols) Gaussian; H (cols, cols) = 2/T XᵀX of LLM-like inputs X (T, cols)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen)
    scales = torch.exp(torch.randn(cols, generator=gen))  # feature scales over ~2 orders of magnitude
    scales[torch.randperm(cols, generator=gen)[:6]] *= 20.0  # a few outlier features
    shared = torch.randn(cols, 16, generator=gen) / 4  # a low-rank part all tokens share
    W, scales, shared = W.to(device), scales.to(device), shared.to(device)
    H = torch.zeros(cols, cols, device=device)
    chunk = 4096
    for start in range(0, tokens, chunk):  # X in chunks: never (T, cols) at once
        n = min(chunk, tokens - start)
        z = torch.randn(n, cols, generator=gen).to(device)
        g = torch.randn(n, 16, generator=gen).to(device)
        X = z * scales + g @ shared.t()  # (n, cols)
        H.addmm_(X.t(), X, alpha=2.0 / tokens)
    return W, H


def timed(fn, device: torch.device, repeats: int):
    """(best seconds, last result) over `repeats` calls after one warm-up."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return cpu_machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="rows x columns, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS).replace("%", "%%"))
    parser.add_argument("--tokens", type=int, default=8192, help="inputs behind each Hessian")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweeps", default=None,
                        help="comma-separated, of reference, blocked, fast (default: reference,fast; "
                             "with blocked on CUDA, where fast is the Triton kernel)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [name.strip() for name in args.variants.split(",")]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    default = "reference,blocked,fast" if device.type == "cuda" else "reference,fast"
    sweeps = [name.strip() for name in (args.sweeps or default).split(",")]
    if not set(sweeps) <= {"reference", "blocked", "fast"}:
        raise SystemExit(f"--sweeps: choose from reference, blocked, fast; got {args.sweeps}")

    rows_out = []
    print(f"machine: {machine(device)}")
    header = " | ".join(f"{name} (s)" for name in sweeps) + " | " + " | ".join(f"error, {name}" for name in sweeps)
    print(f"| layer | variant | {header} | speed-up, {sweeps[-1]} vs {sweeps[0]} |")
    print("| --- | --- |" + " ---: |" * (2 * len(sweeps) + 1))
    shapes = []
    for shape in args.shapes.split(","):
        try:
            rows, cols = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {shape!r} is not ROWSxCOLUMNS (e.g. 4096x11008)") from None
        shapes.append((rows, cols))
    for rows, cols in shapes:
        W, H = layer_problem(rows, cols, args.tokens, device)
        for name in variants:
            config = VARIANTS[name]
            seconds, errors = {}, {}
            for sweep in sweeps:
                seconds[sweep], solved = timed(lambda: sparsegpt(W, H, config, sweep=sweep), device, args.repeats)
                errors[sweep] = relative_layer_error(W, solved.weight, H)
            rows_out.append({"shape": [rows, cols], "variant": name, "seconds": seconds, "relative_error": errors})
            times = " | ".join(f"{seconds[s]:.3f}" for s in sweeps)
            errs = " | ".join(f"{errors[s]:.5f}" for s in sweeps)
            print(f"| {rows}x{cols} | {name} | {times} | {errs} | {seconds[sweeps[0]] / seconds[sweeps[-1]]:.1f}x |",
                  flush=True)
        del W, H
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(device), "tokens": args.tokens, "repeats": args.repeats,
                                               "rows": rows_out}, indent=2) + "\n")


if __name__ == "__main__":
    main()

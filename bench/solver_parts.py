"""Time the parts the speed work changed, each against what it replaced, on this machine.

- Hessian accumulation of one calibration batch: one full XᵀX product (before) against the
  upper triangle in four row panels (`HessianAccumulator.add`), for T tokens and C columns.
- The inverse Hessian's factor: the authors' three steps (Cholesky, inverse from the factor,
  Cholesky of the inverse) against `damped_inverse` (one Cholesky of the reversed matrix and a
  triangular inverse), with their largest relative difference.
- A block-sized matrix product in float32 against bfloat16: what `--forward-dtype bfloat16` buys.

    python bench/solver_parts.py [--columns 576,1536,4096,11008] [--json bench/results/solver_parts.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunellm.solvers import HessianAccumulator, damped_inverse

from solver import machine  # noqa: E402  (bench/ is this script's directory, first on sys.path)


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def authors_factor(H: torch.Tensor, damp_frac: float = 0.01) -> torch.Tensor:
    damped = H.clone()
    torch.diagonal(damped).add_(damp_frac * torch.diagonal(H).mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--columns", default="576,1536,4096,11008")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per calibration batch (one window)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"machine: {machine(torch.device('cpu'))}")
    print("| columns | Hessian batch: full (ms) | triangle (ms) | x | factor: authors (s) | prunellm (s) | x "
          "| max rel. diff |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cols in (int(c) for c in args.columns.split(",")):
        x = torch.randn(args.tokens, cols, generator=gen)
        H = torch.zeros(cols, cols)
        full = best_of(lambda: H.addmm_(x.t(), x, alpha=1e-3), 5)
        acc = HessianAccumulator(cols)
        triangle = best_of(lambda: acc.add(x), 5)
        X = torch.randn(cols + 64, cols, generator=gen) * torch.exp(torch.randn(cols, generator=gen))
        H = X.t() @ X / cols
        del X
        repeats = 1 if cols > 4096 else 3
        theirs = best_of(lambda: authors_factor(H), repeats)
        ours = best_of(lambda: damped_inverse(H), repeats)
        difference = float((damped_inverse(H).upper - authors_factor(H)).abs().max() / authors_factor(H).abs().max())
        rows.append({"columns": cols, "hessian_full_s": full, "hessian_triangle_s": triangle,
                     "factor_authors_s": theirs, "factor_prunellm_s": ours, "factor_max_rel_diff": difference})
        print(f"| {cols} | {full * 1e3:.1f} | {triangle * 1e3:.1f} | {full / triangle:.1f} | {theirs:.2f} | "
              f"{ours:.2f} | {theirs / ours:.1f} | {difference:.1e} |", flush=True)
    products = []
    for m, k, n in [(512, 576, 1536), (512, 1536, 576), (2048, 4096, 11008)]:
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        fp32 = best_of(lambda: a @ b, 5)
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16 = best_of(lambda: a16 @ b16, 5)
        products.append({"shape": [m, k, n], "float32_s": fp32, "bfloat16_s": bf16})
        print(f"product ({m}x{k}) @ ({k}x{n}): float32 {fp32 * 1e3:.1f} ms ({2 * m * k * n / fp32 / 1e9:.0f} GFLOP/s), "
              f"bfloat16 {bf16 * 1e3:.1f} ms ({2 * m * k * n / bf16 / 1e9:.0f} GFLOP/s): {fp32 / bf16:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(torch.device("cpu")), "tokens": args.tokens,
                                               "rows": rows, "products": products}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Peak host memory of one layer's solve, step by step: what a streamed prune holds above its floor.

A seeded layer problem (W: rows x cols, H from random inputs) is solved by each step in turn:
SparseGPT, SparseGPT in lent storage (the weight and the Hessian its to overwrite, as a streamed
prune lends them), ALPS's ADMM search, the least-squares refinement, the whole ALPS refinement,
the layer error, and the two finite checks of a Hessian (torch.isfinite(H).all() and the solvers'
all_finite). For each, prints the peak of anonymous resident memory above what was resident
before it (sampled every 5 ms from /proc, after returning freed heap pages to the system), in
MiB and in units of the layer's (C, C) and (R, C) float32 matrices. Linux only; CPU.

    python bench/solver_memory.py                                 # SmolLM2-like down_proj, 1024 x 2816
    python bench/solver_memory.py --rows 4096 --cols 11008 --steps sparsegpt,sparsegpt-lent,isfinite,all_finite
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import torch
from streaming import status  # bench/streaming.py, beside this file

from prunellm.streaming.heap import release_free_memory
from prunellm.solvers import SparseGPTConfig, relative_layer_error, sparsegpt
from prunellm.solvers.alps import admm_search, alps_refine
from prunellm.solvers.hessian import all_finite
from prunellm.solvers.refine import refine_on_mask

STEPS = ("sparsegpt", "sparsegpt-lent", "admm", "refine", "alps", "error", "isfinite", "all_finite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=2816)
    parser.add_argument("--tokens", type=int, default=8192, help="calibration tokens behind H")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    args = parser.parse_args()
    steps = args.steps.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown step(s): {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")

    torch.manual_seed(0)
    rows, cols = args.rows, args.cols
    W = torch.randn(rows, cols) * 0.02  # (R, C)
    X = torch.randn(args.tokens, cols)  # (T, C)
    H = X.T @ X / args.tokens  # (C, C)
    del X
    sampler = PeakSampler()
    sampler.start()
    print(f"layer {rows} x {cols}: (C, C) float32 = {mib(cols * cols * 4):.0f} MiB, "
          f"(R, C) = {mib(rows * cols * 4):.0f} MiB; torch {torch.__version__}, {torch.get_num_threads()} threads")
    pruned = sparsegpt(W, H, SparseGPTConfig(sparsity=args.sparsity))  # the start every later step needs
    lent_W, lent_H = (W.clone(), H.clone()) if "sparsegpt-lent" in steps else (None, None)  # before the floor
    actions: dict[str, Callable[[], object]] = {
        "sparsegpt": lambda: sparsegpt(W, H, SparseGPTConfig(sparsity=args.sparsity)),
        "sparsegpt-lent": lambda: sparsegpt(lent_W, lent_H, SparseGPTConfig(sparsity=args.sparsity),
                                            consume_weight=True, restore_hessian=lambda t: t.copy_(H)),
        "admm": lambda: admm_search(W, H, pruned.weight, pruned.mask),
        "refine": lambda: refine_on_mask(W, H, pruned.weight, pruned.mask),
        "alps": lambda: alps_refine(W, H, pruned.weight, pruned.mask),
        "error": lambda: relative_layer_error(W, pruned.weight, H),
        "isfinite": lambda: bool(torch.isfinite(H).all()),
        "all_finite": lambda: all_finite(H),
    }
    for step in steps:
        extra, seconds = sampler.peak_of(actions[step])
        print(f"{step:>10}: peak +{mib(extra):6.0f} MiB = {extra / (cols * cols * 4):4.1f} x (C, C) "
              f"= {extra / (rows * cols * 4):5.1f} x (R, C)   ({seconds:.1f} s)", flush=True)


class PeakSampler(threading.Thread):
    """The peak of RssAnon while a function runs, above the level before it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.005)

    def peak_of(self, action: Callable[[], object]) -> tuple[int, float]:
        release_free_memory()
        time.sleep(0.05)
        before = rss_anon()
        self.peak = before
        started = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - started
        time.sleep(0.05)  # one more sample after the end
        del result
        return self.peak - before, seconds


def rss_anon() -> int:
    return status()["RssAnon"]


def mib(count: float) -> float:
    return count / 2 ** 20


if __name__ == "__main__":
    main()

"""Where a CPU decode step's time goes: the linear layers' native kernels against the rest
(norms, rotary, attention, the decode loop's Python), issue 28's "time of a decode step outside
the linear layers' kernels".

    python bench/decode_step.py DIR [DIR ...] [--head-bits 4] [--prompt-tokens 128] [--steps 32]

Each DIR is loaded by `prunellm.load(DIR, "cpu")` and decoded at batch 1 by prunellm's own loop
(runtime/decode_loop.py) after a random prompt: the median step over --steps greedy steps, then
the same steps again with every `cpu_kernels.matmul` call timed (its Python wrapper included:
the per-call cost is part of what the kernels cost a step). "outside" is the step minus that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import prunellm
from prunellm.runtime import cpu_kernels
from prunellm.runtime.decode_loop import DecodeLoop, supports


def measure(directory: Path, head_bits: int | None, prompt_tokens: int, steps: int) -> dict:
    model = prunellm.load(directory, "cpu", head_bits=head_bits)
    if not supports(model):
        raise SystemExit(f"{directory}: prunellm's decode loop does not run {type(model).__name__}")
    loop = DecodeLoop(model, prompt_tokens + 2 * steps + 8, 1)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    token = loop.prefill(ids).argmax(-1)
    for _ in range(4):  # warm-up
        token = loop.step(token).argmax(-1)
    plain = []
    for _ in range(steps):
        start = time.perf_counter()
        token = loop.step(token).argmax(-1)
        plain.append(time.perf_counter() - start)
    inside = [0.0]
    calls = [0]
    matmul = cpu_kernels.matmul

    def timed_matmul(x: torch.Tensor, weight: cpu_kernels.NativeWeight) -> torch.Tensor:
        start = time.perf_counter()
        y = matmul(x, weight)
        inside[0] += time.perf_counter() - start
        calls[0] += 1
        return y

    cpu_kernels.matmul = timed_matmul
    try:
        start = time.perf_counter()
        for _ in range(steps):
            token = loop.step(token).argmax(-1)
        timed_step = (time.perf_counter() - start) / steps
    finally:
        cpu_kernels.matmul = matmul
    step = statistics.median(plain)
    kernels = inside[0] / steps
    return {"directory": directory.name, "head_bits": head_bits, "step_ms": step * 1e3, "tokens_per_second": 1 / step,
            "timed_step_ms": timed_step * 1e3, "kernel_ms": kernels * 1e3, "kernel_calls": calls[0] // steps,
            "outside_ms": (timed_step - kernels) * 1e3, "outside_share": (timed_step - kernels) / timed_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--head-bits", type=int, choices=(8, 4))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not cpu_kernels.available():
        raise SystemExit("the native CPU kernels are not built")
    print("| model | step ms | tokens/s | kernels ms (calls) | outside ms | outside share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for directory in args.directories:
        r = measure(directory, args.head_bits, args.prompt_tokens, args.steps)
        head = f" + head {r['head_bits']}-bit" if r["head_bits"] else ""
        print(f"| {r['directory']}{head} | {r['step_ms']:.1f} | {r['tokens_per_second']:.1f} | "
              f"{r['kernel_ms']:.1f} ({r['kernel_calls']}) | {r['outside_ms']:.1f} | {r['outside_share']:.0%} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

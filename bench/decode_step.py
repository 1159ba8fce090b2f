"""Where a CPU decode step's time goes: the linear layers' native kernels against the rest
(norms, rotary, attention, the decode loop's Python), issue 28's "time of a decode step outside
the linear layers' kernels", on each of prunellm's two decode paths.

    python bench/decode_step.py DIR [DIR ...] [--head-bits 4] [--prompt-tokens 128] [--steps 32]

Each DIR is loaded by `prunellm.load(DIR, "cpu")` and decoded at batch 1 by prunellm's own loop
(runtime/decode_loop.py) after a random prompt, twice: with every block as one native call
(runtime/decode_block.py, what the loop runs where the kernels read every projection) and with
the blocks as torch operations around the kernel calls (`native_blocks=False`). "kernels" is
the time inside the native products by the library's own clock (`pnl_kernel_nanoseconds`: the
team's products from the call to their return, no Python wrapper); "outside" is the rest of the
step. Medians over --steps greedy steps after a warm-up. A bfloat16 model's native blocks run
twice: on their bfloat16 key/value cache (the default) and on a float32 one (the cache before),
the same logits bit for bit; "cache" names each row's.
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
from prunellm.runtime.bench_infer import machine_description
from prunellm.runtime.decode_loop import DecodeLoop, supports


def measure(model: torch.nn.Module, native_blocks: bool, prompt_tokens: int, steps: int,
            kv_dtype: torch.dtype | None = None) -> dict:
    loop = DecodeLoop(model, prompt_tokens + steps + 8, 1, native_blocks=native_blocks, kv_dtype=kv_dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    token = loop.prefill(ids).argmax(-1)
    for _ in range(4):  # warm-up
        token = loop.step(token).argmax(-1)
    clock = cpu_kernels._require().pnl_kernel_nanoseconds
    times, outside = [], []
    for _ in range(steps):
        clock(1)
        start = time.perf_counter()
        token = loop.step(token).argmax(-1)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        outside.append(elapsed - clock(0) * 1e-9)
    step, rest = statistics.median(times), statistics.median(outside)
    return {"path": "native blocks" if loop.blocks is not None else "torch ops",
            "cache": str(loop.kv_dtype).removeprefix("torch."), "step_ms": step * 1e3,
            "tokens_per_second": 1 / step, "kernel_ms": (step - rest) * 1e3, "outside_ms": rest * 1e3,
            "outside_share": rest / step}


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
    print(machine_description("cpu"))
    print("| model | decode path | cache | step ms | tokens/s | kernels ms | outside ms | outside share |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for directory in args.directories:
        model = prunellm.load(directory, "cpu", head_bits=args.head_bits)
        if not supports(model):
            raise SystemExit(f"{directory}: prunellm's decode loop does not run {type(model).__name__}")
        head = f" + head {args.head_bits}-bit" if args.head_bits else ""
        variants = [(False, None), (True, None)]
        if model.dtype == torch.bfloat16:
            variants.append((True, torch.float32))
        for native_blocks, kv_dtype in variants:
            r = measure(model, native_blocks, args.prompt_tokens, args.steps, kv_dtype)
            print(f"| {directory.name}{head} | {r['path']} | {r['cache']} | {r['step_ms']:.1f} | "
                  f"{r['tokens_per_second']:.1f} | {r['kernel_ms']:.1f} | {r['outside_ms']:.1f} | "
                  f"{r['outside_share']:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What reading a decoder block from a float16 checkpoint costs a streamed prune.

For one block of a model directory (default: the 2-block LLaMA-7B-width model that
bench/streaming.py builds), prints:
- the seconds to read each linear layer and convert it to float32, as the streaming host does for
  every call of a layer in a statistics pass (best of three rounds, page cache warm);
- the peak resident memory (VmHWM) of a fresh child process that reads the whole block into
  float32 with all its tensors read from one open file, and one tensor at a time (what
  `Skeleton.read` does): the mapped float16 pages count until their tensors are freed.

    python bench/checkpoint_reads.py [MODEL_DIR] [--block 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from streaming import status  # bench/streaming.py, beside this file

from prunellm.io.lazy import LazyCheckpoint

DEFAULT_MODEL = "/tmp/prunellm-bench-streaming/model-4096-11008-32-32000-2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--block", type=int, default=1)
    parser.add_argument("--child", choices=["together", "one-at-a-time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoint = LazyCheckpoint(args.model)
    prefix = f"model.layers.{args.block}."
    names = [k for k in checkpoint.keys() if k.startswith(prefix)]
    if not names:
        raise SystemExit(f"{args.model} has no tensors under {prefix}")
    if args.child:
        before = status()["VmHWM"]
        if args.child == "together":
            raw = checkpoint.read(names)
            block = {k: raw.pop(k).to(torch.float32) for k in names}
        else:
            block = {k: checkpoint.read([k])[k].to(torch.float32) for k in names}
        print(json.dumps({"before": before, "peak": status()["VmHWM"], "tensors": len(block)}))
        return

    linear = [k for k in names if k.endswith("_proj.weight")]
    best = {k: float("inf") for k in linear}
    for _ in range(3):
        for k in linear:
            started = time.perf_counter()
            checkpoint.read([k])[k].to(torch.float32)
            best[k] = min(best[k], time.perf_counter() - started)
    for k in linear:
        print(f"read + float32: {k[len(prefix):]:>20} {best[k]:.3f} s")
    print(f"read + float32: all {len(linear)} linear layers {sum(best.values()):.3f} s")
    for mode in ("together", "one-at-a-time"):
        done = subprocess.run([sys.executable, __file__, args.model, "--block", str(args.block), "--child", mode],
                              capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"block {args.block} into float32, {mode:>13}: VmHWM {figures['peak'] >> 20} MiB "
              f"({figures['before'] >> 20} MiB before)")


if __name__ == "__main__":
    main()

"""A compressed layer's expansion on this CPU: what a prefill (a call beyond the kernels' token
limit) does before torch's product (runtime/linear.py).

    python bench/cpu_expand.py [--threads 2] [--out bench/results/cpu_expand.json]

Per LLaMA-7B shape and layout (bench/layer_kernels.py's, stored bfloat16), the median time of
`cpu_kernels.expand_for_call` (into the buffer a thread keeps between calls) at every level this
CPU runs (PRUNELLM_CPU_KERNEL), and at the best level of `cpu_kernels.expand` into a fresh tensor
(what each call cost before the buffer: the page faults of a new 50-90 MB tensor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_kernels import SHAPES, cpu_description, layer, timed  # noqa: E402

from prunellm.runtime import cpu_kernels  # noqa: E402

EXPANDED = ["50% bitmask bf16", "2:4 bf16", "50% bitmask + 4-bit g128", "2:4 + 4-bit g128", "4-bit g128", "8-bit g128"]


def run(shapes: dict[str, tuple[int, int]]) -> list[dict]:
    levels = cpu_kernels.supported_levels()
    best = levels[-1]
    results = []
    for shape, (rows, cols) in shapes.items():
        for name in EXPANDED:
            packed = layer(name, rows, cols)
            native = cpu_kernels.prepare(packed.spec, packed.tensors)
            row = {"shape": shape, "layout": name}
            for level in levels:
                os.environ[cpu_kernels.ENV] = level
                row[level] = timed(lambda: cpu_kernels.expand_for_call(native), budget_s=0.5) * 1e3
            os.environ[cpu_kernels.ENV] = best
            row["fresh tensor"] = timed(lambda: cpu_kernels.expand(native), budget_s=0.5) * 1e3
            results.append(row)
            print(row, flush=True)
            del native
    os.environ.pop(cpu_kernels.ENV, None)
    return results


def markdown(results: list[dict]) -> str:
    columns = [key for key in results[0] if key not in ("shape", "layout")]
    lines = ["| shape | layout | " + " | ".join(f"{c} ms" for c in columns) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
    for row in results:
        lines.append(f"| {row['shape']} | {row['layout']} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="tiny shapes: a smoke test, not figures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not cpu_kernels.available():
        raise SystemExit("the native CPU kernels are not built")
    cpu = cpu_description()
    shapes = {"small 264x384": (264, 384)} if args.small else SHAPES
    results = run(shapes)
    print(f"CPU: {cpu['model']}; {args.threads} threads; features: {cpu['flags']}")
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

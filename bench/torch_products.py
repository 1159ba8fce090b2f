"""torch's own dense product at decode under each instruction-set cap, side by side.

    python bench/torch_products.py [--shape 4096 4096] [--tokens 1 16] [--threads 2] [--working-set-mib 1024]

bench/layer_kernels.py measures the kernels against torch's product as torch runs it by default.
On a CPU with AVX-512 and no AMX that default can be slower than torch with its instruction set
capped (bench/README.md, "Per-layer CPU kernels": the AVX2-only imitation): this script times
F.linear on bfloat16 and float32 weights in a child process per setting (the caps are read when
torch loads), cycling through copies of the layer in distinct memory as layer_kernels.py does,
and prints each setting's time and its ratio to the default. The settings: the default;
`ATEN_CPU_CAPABILITY=avx2` (torch's own kernels); that and `ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN's,
which runs the bfloat16 matrix products).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "default": {},
    "ATen at AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen and oneDNN at AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def child(rows: int, cols: int, tokens: list[int], threads: int, working_set: int) -> dict:
    """This process's times: {dtype: {tokens: median ms a call}}, and torch's capability."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(__file__))
    from layer_kernels import copies_for, cycled

    torch.set_num_threads(threads)
    base = torch.randn(rows, cols)
    out: dict = {"capability": torch.backends.cpu.get_cpu_capability()}
    for dtype in (torch.bfloat16, torch.float32):
        weights = [base.to(dtype) for _ in range(copies_for(base.numel() * dtype.itemsize, working_set))]
        out[str(dtype).removeprefix("torch.")] = {
            count: cycled(lambda w, x=torch.randn(count, cols).to(dtype): F.linear(x, w), weights) * 1e3
            for count in tokens}
        del weights
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[4096, 4096], metavar=("ROWS", "COLS"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--working-set-mib", type=int, default=1024)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows, cols = args.shape
    if args.child:
        print(json.dumps(child(rows, cols, args.tokens, args.threads, args.working_set_mib * 2**20)))
        return
    results = {}
    for name, caps in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
        done = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env={**env, **caps},
                              capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout)
    sys.path.insert(0, os.path.dirname(__file__))
    from layer_kernels import cpu_description

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; features: {cpu['flags']}")
    print(f"{rows}x{cols}, {args.threads} threads, {args.working_set_mib} MiB of copies; ms a call (x the default)")
    for dtype in ("bfloat16", "float32"):
        for count in args.tokens:
            key = str(count)
            default = results["default"][dtype][key]
            cells = [f"{name} ({results[name]['capability']}): {results[name][dtype][key]:.3f} "
                     f"({default / results[name][dtype][key]:.2f}x)" for name in SETTINGS]
            print(f"{dtype:9s} {count:3d} tok  " + "  |  ".join(cells))


if __name__ == "__main__":
    main()

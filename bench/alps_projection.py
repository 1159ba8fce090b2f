"""ALPS's projection step against the plain selections it replaced, at real layer shapes.

Every ADMM iteration runs one (R, C) @ (C, C) product and projects the iterate onto the
sparsity budget. The projection used a full selection (kthvalue over the layer's R*C
magnitudes, unstructured) or topk within groups of 4 (2:4); `prunellm.solvers.alps` now brackets
the threshold on a strided sample and ranks 2:4 groups with a sorting network. This prints, per
shape, the milliseconds of each, the ratio, and the iteration's product for scale, and checks
that the masks are identical. Figures: bench/README.md, section "ALPS's projection step".

    python bench/alps_projection.py                      # SmolLM2-135M and LLaMA-7B shapes
    python bench/alps_projection.py --shapes 576x1536 --repeats 50
"""

from __future__ import annotations

import argparse
import time

import torch

from prunellm.solvers.alps import _keep_largest_in_groups, _kth_largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="576x576,1536x576,576x1536,4096x4096,11008x4096,4096x11008",
                        help="comma-separated RxC layer shapes (out x in)")
    parser.add_argument("--kept", type=float, default=0.3, help="fraction kept, unstructured (0.3: 70%% sparsity)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    print("| shape | kthvalue (ms) | sampled bracket (ms) | × | topk 2:4 (ms) | sorting network (ms) | × | one product (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in args.shapes.split(","):
        rows, cols = (int(x) for x in shape.split("x"))
        Z = torch.randn(rows, cols)  # (R, C): an ADMM iterate's stand-in
        magnitude = Z.abs().flatten()  # (R*C,)
        k = int(args.kept * magnitude.numel())
        groups = Z.abs().reshape(rows, cols // 4, 4)  # (R, C/4, 4)
        Q = torch.randn(cols, cols)  # (C, C)

        full = median_ms(lambda: magnitude.kthvalue(magnitude.numel() - k + 1).values, args.repeats)
        sampled = median_ms(lambda: _kth_largest(magnitude, k), args.repeats)
        topk = median_ms(lambda: torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True),
                   args.repeats)
        network = median_ms(lambda: _keep_largest_in_groups(groups, 2), args.repeats)
        product = median_ms(lambda: Z @ Q, max(1, args.repeats // 2))

        assert _kth_largest(magnitude, k).item() == magnitude.kthvalue(magnitude.numel() - k + 1).values.item()
        expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        assert torch.equal(_keep_largest_in_groups(groups, 2), expected)
        print(f"| {rows}×{cols} | {full:.2f} | {sampled:.2f} | {full / sampled:.1f} | {topk:.2f} | {network:.2f} "
              f"| {topk / network:.1f} | {product:.1f} |", flush=True)


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e3 * sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()

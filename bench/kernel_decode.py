"""Decode-time y = x @ Wᵀ at LLaMA-7B's linear shapes: dense fp16 against compressed weights.

Shapes (rows x columns = out x in features): 4096x4096 (q/k/v/o), 11008x4096 (gate/up),
4096x11008 (down_proj); 1 and 16 tokens. For each, times (triton.testing.do_bench: warmed up, the
L2 cache flushed before every call so the weight streams from memory as at decode, median):

- dense fp16       torch's x @ Wᵀ (cuBLAS), the baseline;
- torch int4 g128  torch.ops.aten._weight_int4pack_mm (tinygemm, groups of 128), where this torch
                   build has it;
- prunellm's kernels (src/prunellm/runtime/kernels.py) on compress_weight's layouts: 4-bit and
  8-bit codes in groups of 128 ("quant"), 2:4 with fp16 values, 2:4 with 4-bit codes (groups of
  128). Each is tuned on its first call (not timed), and checked against x @ Wᵀ of the
  decompressed weight (column "error": max |y - ref| / max |ref|).

With --prefill-tokens (default 2048), also a prefill's product: dense fp16 against each layout
expanded per call (by prunellm's Triton `expand`, and by torch operations) then multiplied densely.

Times are the GPU's: the L2 flush before each call gives the CPU time to queue the next kernels,
so Python's launch overhead is hidden, as under CUDA graphs. Prints ms, the speed-up against
dense fp16 and the effective weight bandwidth (the bytes of the weight as stored, scales and
indices included, over the time), and writes the figures as JSON.

    python bench/kernel_decode.py
    python bench/kernel_decode.py --shapes 4096x4096 --tokens 1 --out bench/results/kernels_h100.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from prunellm.formats.compressed.layer import CompressedWeight, compress_weight, decompress_weight
from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize

from smollm2_table import machine as cpu_machine  # noqa: E402  (bench/ is first on sys.path)

KERNELS = ("dense fp16", "torch int4 g128", "4-bit g128", "8-bit g128", "2:4", "2:4 + 4-bit g128")
GROUP = 128


def on_grid(weight: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, QuantGrid]:
    """weight (R, C) float32 rounded onto asymmetric min-max grids per group, and the grid."""
    rows, cols = weight.shape
    groups = weight.reshape(-1, group_size or cols)  # (R * G, group)
    scale, zero = fit_minmax(groups, bits, sym=False)
    rounded = quantize(groups, scale[:, None], zero[:, None], bits).reshape(rows, cols)
    return rounded, QuantGrid(bits, False, group_size, scale.reshape(rows, -1), zero.reshape(rows, -1))


def prune_24(weight: torch.Tensor) -> torch.Tensor:
    """The two largest |w| of every four inputs kept."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    return torch.zeros_like(groups).scatter(-1, keep, groups.gather(-1, keep)).reshape(rows, cols)


def compressed(name: str, weight: torch.Tensor) -> CompressedWeight:
    """weight (R, C) float32 compressed as kernel `name` reads it, in fp16."""
    if name == "4-bit g128":
        rounded, grid = on_grid(weight, 4, GROUP)
        packed = compress_weight(rounded.half(), grid)
    elif name == "8-bit g128":
        rounded, grid = on_grid(weight, 8, GROUP)
        packed = compress_weight(rounded.half(), grid)
    elif name == "2:4":
        packed = compress_weight(prune_24(weight).half(), nm=(2, 4))
    else:  # 2:4 + 4-bit g128
        rounded, grid = on_grid(prune_24(weight), 4, GROUP)
        packed = compress_weight(rounded.half(), grid, nm=(2, 4))
    expected = "nm" if name.startswith("2:4") else "quant"
    assert packed is not None and packed.spec.layout == expected, f"{name}: got {packed and packed.spec}"
    return packed


def torch_int4(weight: torch.Tensor, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor], int] | str:
    """(the timed call, weight bytes) of torch's int4 weight-only product in groups of 128 (random
    codes and scales: only its time matters), or why this torch cannot run it."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return "this torch has no aten._weight_int4pack_mm"
    rows, cols = weight.shape
    codes = torch.randint(0, 16, (rows, cols), dtype=torch.int32, device=weight.device)
    errors = []
    # torch >= 2.5 packs from uint8 (two codes a byte, the first in the high nibble); older from int32.
    for source in ((codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), codes):
        for dtype in (x.dtype, torch.bfloat16):  # older CUDA kernels take bf16 only
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack(source, 8)
                scales_zeros = torch.rand(cols // GROUP, rows, 2, device=weight.device).to(dtype)
                xd = x.to(dtype)
                call = lambda: torch.ops.aten._weight_int4pack_mm(xd, packed, GROUP, scales_zeros)  # noqa: E731
                if call().shape != (x.shape[0], rows):
                    raise RuntimeError("unexpected output shape")
                nbytes = packed.numel() * packed.element_size() + scales_zeros.numel() * scales_zeros.element_size()
                return call, nbytes
            except (RuntimeError, TypeError) as error:
                errors.append(str(error).splitlines()[0][:120])
    return f"aten._weight_int4pack_mm failed: {errors[-1]}"


def relative_error(y: torch.Tensor, x: torch.Tensor, packed: CompressedWeight) -> float:
    reference = x.float() @ decompress_weight(packed).float().t()  # (B, R)
    return float((y.float() - reference).abs().max() / reference.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="rows x columns, comma-separated")
    parser.add_argument("--tokens", default="1,16", help="batch sizes, comma-separated (1 to 16)")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, of: {', '.join(KERNELS)}")
    parser.add_argument("--rep", type=int, default=200, help="do_bench's timing budget per kernel, ms")
    parser.add_argument("--prefill-tokens", type=int, default=2048,
                        help="also time a prefill of this many tokens: dense against expand-then-multiply (0: skip)")
    parser.add_argument("--out", default="bench/results/kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernel_decode.py needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    if importlib.util.find_spec("triton") is None:
        print("bench/kernel_decode.py needs triton (pip install triton)", file=sys.stderr)
        sys.exit(2)
    import triton
    from triton.testing import do_bench

    from prunellm.runtime.kernels import compressed_matmul, expand, tuned_config

    names = [name.strip() for name in args.kernels.split(",")]
    unknown = [name for name in names if name not in KERNELS]
    if unknown:
        raise SystemExit(f"unknown kernel(s) {unknown}; choose from {list(KERNELS)}")
    try:
        shapes = [tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes.split(",")]
        token_counts = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        raise SystemExit(f"--shapes: ROWSxCOLUMNS,... (e.g. 4096x11008); --tokens: integers; got "
                         f"{args.shapes!r}, {args.tokens!r}") from None
    device = torch.device("cuda")
    machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}; " \
              f"host: {cpu_machine()}"

    def timed(call: Callable[[], torch.Tensor]) -> float:
        return do_bench(call, warmup=25, rep=args.rep, return_mode="median")

    print(f"machine: {machine}")
    print("| layer | tokens | kernel | ms | speed-up vs dense fp16 | weight GB/s | weight MB | error | config |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    results = []
    for rows, cols in shapes:
        torch.manual_seed(0)
        weight = torch.randn(rows, cols, device=device) * 0.02  # (R, C) float32
        dense = weight.half()
        layers = {name: compressed(name, weight) for name in names if name not in ("dense fp16", "torch int4 g128")}
        for tokens in token_counts:
            x = torch.randn(tokens, cols, device=device).half()  # (B, C)
            baseline = timed(lambda: torch.nn.functional.linear(x, dense))
            for name in names:
                row = {"shape": [rows, cols], "tokens": tokens, "kernel": name}
                error, config = "", ""
                if name == "dense fp16":
                    ms, nbytes = baseline, dense.numel() * dense.element_size()
                elif name == "torch int4 g128":
                    found = torch_int4(weight, x)
                    if isinstance(found, str):
                        print(f"| {rows}x{cols} | {tokens} | {name} | – | – | – | – | – | {found} |",
                              flush=True)
                        results.append({**row, "skipped": found})
                        continue
                    call, nbytes = found
                    ms = timed(call)
                else:
                    packed = layers[name]
                    nbytes = packed.nbytes
                    y = compressed_matmul(x, packed)  # tunes on the first call for this shape
                    error = f"{relative_error(y, x, packed):.1e}"
                    chosen = tuned_config(packed.spec, tokens, device)
                    config = f"{chosen.block_n}x{chosen.block_k}, split {chosen.split_k}" if chosen else ""
                    ms = timed(lambda: compressed_matmul(x, packed))
                gbps = nbytes / (ms * 1e-3) / 1e9
                results.append({**row, "ms": ms, "speedup": baseline / ms, "weight_bytes": nbytes,
                                "weight_gbps": gbps, "relative_error": float(error) if error else None,
                                "config": config or None})
                print(f"| {rows}x{cols} | {tokens} | {name} | {ms:.4f} | {baseline / ms:.2f}x | {gbps:.0f} | "
                      f"{nbytes / 1e6:.1f} | {error} | {config} |", flush=True)
        if args.prefill_tokens > 0:
            x = torch.randn(args.prefill_tokens, cols, device=device).half()
            baseline = timed(lambda: torch.nn.functional.linear(x, dense))
            print(f"| {rows}x{cols} | {args.prefill_tokens} | dense fp16 (prefill) | {baseline:.4f} | 1.00x | | | | |")
            for name, packed in layers.items():
                for how, widen in (("Triton expand", expand), ("torch expand", decompress_weight)):
                    ms = timed(lambda: torch.nn.functional.linear(x, widen(packed)))
                    results.append({"shape": [rows, cols], "tokens": args.prefill_tokens,
                                    "kernel": f"{name}, {how} + dense", "ms": ms, "speedup": baseline / ms})
                    print(f"| {rows}x{cols} | {args.prefill_tokens} | {name}, {how} + dense | {ms:.4f} | "
                          f"{baseline / ms:.2f}x | | | | |", flush=True)
        del weight, dense, layers
        torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "rep_ms": args.rep, "rows": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

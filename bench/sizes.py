"""File sizes of the compressed format against float16, on SmolLM2-135M and a LLaMA-7B layer.

Sizes depend on the shape, the sparsity pattern and the grid, not on which solver chose the
zeros and rounded the values: so that this runs in seconds, weights are pruned by magnitude
(unstructured or n:m) and rounded to the nearest point of a min-max grid; SparseGPT or GPTQ
at the same settings write files of the same size (give or take a bitmask's exact count).

For SmolLM2 the whole model is written with `save_compressed` (float16 values, embeddings and
norms in float16) and the file measured; for the 7B-shaped layer (11008 x 4096, gate/up) the
compressed layer's bytes. Both against the float16 dense bytes.

    python bench/sizes.py                       # table, and bench/results/sizes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from prunellm.io import default_model_path, load_model
from prunellm.formats.compressed.checkpoint import save_compressed
from prunellm.formats.compressed.layer import compress_weight, decompress_weight
from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize
from prunellm.walker import WalkConfig, target_layers
from prunellm.layers import read_weight, write_weight

from smollm2_table import machine  # noqa: E402  (bench/ is first on sys.path)

# name -> (unstructured sparsity, n:m, bits, grouped): groups of 128 inputs at 7B, of 64 in
# SmolLM2 (576 inputs are not a multiple of 128)
SETTINGS = {
    "50%": (0.5, None, None, False),
    "2:4": (None, (2, 4), None, False),
    "70%": (0.7, None, None, False),
    "4-bit grouped": (None, None, 4, True),
    "8-bit per row": (None, None, 8, False),
    "50% + 4-bit grouped": (0.5, None, 4, True),
    "2:4 + 4-bit grouped": (None, (2, 4), 4, True),
    "2:4 + 8-bit per row": (None, (2, 4), 8, False),
}


def compress_like(weight: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None, bits: int | None,
                  group_size: int | None) -> tuple[torch.Tensor, QuantGrid | None]:
    """weight (R, C) float32 pruned by magnitude and rounded to a min-max grid: (new weight, grid)."""
    rows, cols = weight.shape
    w = weight.clone()
    if nm is not None:
        n, m = nm
        groups = w.reshape(rows, cols // m, m)
        smallest = groups.abs().topk(n, dim=-1, largest=False).indices
        groups.scatter_(-1, smallest, 0.0)
    elif sparsity:
        k = int(rows * cols * sparsity)
        threshold = w.abs().flatten().kthvalue(k).values
        w[w.abs() <= threshold] = 0.0
    if bits is None:
        return w, None
    g = group_size or cols
    grouped = w.reshape(rows * cols // g, g)
    scale, zero = fit_minmax(grouped, bits, sym=False)
    w = quantize(grouped, scale[:, None], zero[:, None], bits).reshape(rows, cols)
    grid = QuantGrid(bits, False, group_size, scale.reshape(rows, cols // g), zero.reshape(rows, cols // g))
    return w, grid


def smollm2_rows() -> list[dict]:
    rows = []
    dense_model, tokenizer = load_model(str(default_model_path()), dtype="float32")
    names = list(target_layers(dense_model, WalkConfig()))
    originals = {name: read_weight(dense_model.get_submodule(name)) for name in names}
    for setting, (sparsity, nm, bits, grouped) in SETTINGS.items():
        group_size = 64 if grouped else None
        grids = {}
        for name in names:
            weight, grid = compress_like(originals[name], sparsity, nm, bits, group_size)
            write_weight(dense_model.get_submodule(name), weight)
            if grid is not None:
                grids[name] = grid
        with tempfile.TemporaryDirectory() as tmp:
            _, summary = save_compressed(dense_model, None, Path(tmp) / "c", names, grids=grids, nm=nm)
        rows.append({"model": "SmolLM2-135M", "setting": setting, "group_size": group_size, **summary.to_json(),
                     "layers_ratio": summary.layers_bytes / summary.layers_fp16_bytes,
                     "file_ratio": summary.file_bytes / summary.model_fp16_bytes})
        print(f"SmolLM2-135M  {setting:<22} layers {summary.layers_bytes / 2**20:7.1f} MiB "
              f"({rows[-1]['layers_ratio']:.3f}x fp16)  file {summary.file_bytes / 2**20:7.1f} MiB "
              f"({rows[-1]['file_ratio']:.3f}x of {summary.model_fp16_bytes / 2**20:.1f} MiB)", flush=True)
    return rows


def layer_rows(shape: tuple[int, int] = (11008, 4096)) -> list[dict]:
    rows = []
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    fp16 = 2 * shape[0] * shape[1]
    for setting, (sparsity, nm, bits, grouped) in SETTINGS.items():
        group_size = 128 if grouped else None
        pruned, grid = compress_like(weight, sparsity, nm, bits, group_size)
        pruned = pruned.to(torch.float16)
        packed = compress_weight(pruned, grid, nm)
        assert packed is not None and torch.equal(decompress_weight(packed), pruned), setting
        bits_per_weight = 8 * packed.nbytes / (shape[0] * shape[1])
        rows.append({"model": f"LLaMA-7B layer {shape[0]}x{shape[1]}", "setting": setting, "group_size": group_size,
                     "layout": packed.spec.layout,
                     "bytes": packed.nbytes, "fp16_bytes": fp16, "ratio": packed.nbytes / fp16,
                     "bits_per_weight": bits_per_weight})
        print(f"7B layer      {setting:<22} {packed.spec.layout:<8} {packed.nbytes / 2**20:7.1f} MiB "
              f"({packed.nbytes / fp16:.3f}x fp16, {bits_per_weight:.2f} bits/weight)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="bench/results/sizes.json")
    args = parser.parse_args()
    rows = layer_rows() + smollm2_rows()
    Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()

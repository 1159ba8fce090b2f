"""Convert a saved prune (a safetensors directory) to the compressed format without loading it
whole: one layer's weight in memory at a time, as `--stream` prunes.

The model is a meta-device skeleton (io/skeleton.py) over the directory's lazily read tensors;
each compressed layer is read, packed and released, every other tensor read and cast. Peak
memory is the compressed result plus the uncompressed tensors (embeddings, head) plus one layer,
so a model streamed because it does not fit in memory can be exported on the same machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prunellm.io.dtypes import cast_checked
from prunellm.io.lazy import LazyCheckpoint
from prunellm.io.save import check_output_dir
from prunellm.io.skeleton import build_skeleton
from prunellm.solvers.quant import QuantGrid

from .checkpoint import SizeSummary, compress_layers, save_dtype, write_compressed_dir


def export_compressed_lazily(directory: str | Path, out: str | Path, layer_names: list[str], *,
                             grids: dict[str, QuantGrid] | None = None, nm: tuple[int, int] | None = None,
                             dtype: str = "auto", report: dict | None = None,
                             overwrite: bool = False) -> tuple[Path, SizeSummary]:
    """`directory` (written by `prunellm prune --out`, streamed or not) in the compressed format
    at `out`, with the layers `layer_names` compressed; returns the path and what it saved."""
    from transformers import GenerationConfig

    from prunellm.io.load import load_tokenizer

    out = Path(out).expanduser()
    check_output_dir(out, overwrite)
    directory = Path(directory).expanduser()
    skeleton = build_skeleton(LazyCheckpoint(directory), "auto")  # the dtype the prune saved
    model = skeleton.model
    target = save_dtype(model, dtype)
    packed = {}
    for name in layer_names:
        skeleton.materialize(skeleton.stored(name), "cpu")  # this layer's weight (and bias) only
        try:
            packed.update(compress_layers(model, [name], grids or {}, nm, target))
        finally:
            skeleton.release(name)
    compressed = {f"{name}.weight" for name in packed}
    tensors: dict[str, torch.Tensor] = {}
    for stored, name in skeleton.model_name.items():  # a tied tensor once, under its first name
        if name in compressed:
            continue
        tensors[name] = cast_checked(name, skeleton.read([stored])[stored], target).contiguous()
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return write_compressed_dir(out, model, load_tokenizer(directory), packed, tensors, target, report=report,
                                overwrite=overwrite)

"""`prunellm.load`: a working Hugging Face model from a directory prunellm wrote.

Any format prunellm writes loads (the formats table, prunellm.formats, recognises it); in
prunellm's compressed format (compression.json) the layers become CompressedLinear modules, or
plain dense layers expanded once at load (`keep_compressed=False`, the format's own reader).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunellm.devices import resolve_device
from prunellm.errors import PrunellmError
from prunellm.formats import detect_format, get_format
from prunellm.formats.compressed.checkpoint import CompressedCheckpoint, read_compressed
from prunellm.formats.compressed.layer import CompressedWeight, bitmask_as_quant
from prunellm.formats.compressed.model import build_skeleton, dense_linear, layer_slot, load_rest

from .linear import CompressedLinear

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def keeps_compressed(device: torch.device, keep_compressed: bool | None) -> bool:
    """None: keep layers compressed where kernels read them (CUDA with Triton), else expand at
    load (on a CPU, dense products are fastest: expanding per call costs time, saves memory)."""
    if keep_compressed is not None:
        return keep_compressed
    if device.type != "cuda":
        return False
    from . import kernels

    return kernels.available()


def load(path: str | Path, device: str | torch.device | None = None, *,
         keep_compressed: bool | None = None, dense_budget: int | None = None) -> PreTrainedModel:
    """The causal LM saved at `path`, on `device` (default: CUDA when present), in eval mode.

    keep_compressed: for prunellm's compressed format, hold every compressed layer compressed
    in memory and expand it (or read it with a GPU kernel) at each call: memory of the
    compressed model plus one dense layer. False expands every layer once at load. None (the
    default): on a GPU with Triton, the layers a kernel reads stay compressed and the others
    (unstructured float layers, say) are expanded once; on a CPU every layer is expanded.

    dense_budget: with keep_compressed, bytes of memory that expanded layers may take: layers
    are expanded once at load, in model order, while they fit, the rest per call. Decoding
    visits every layer in turn, so a fixed set of dense layers is what a budget smaller than
    the model can buy (a least-recently-used cache would miss on every call).
    """
    target = resolve_device(device)
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise PrunellmError(f"not a model directory: {directory}")
    if dense_budget is not None and dense_budget < 0:
        raise PrunellmError(f"dense_budget must be >= 0 bytes, got {dense_budget}")
    fmt = detect_format(directory)
    keep = keeps_compressed(target, keep_compressed)
    if fmt is None or fmt.name != "compressed" or not keep:
        # Every other format, and a compressed one expanded at load: the format's own reader.
        return (fmt or get_format("hf")).load(directory, device=target).to(target).eval()
    checkpoint = read_compressed(directory)
    model = build_skeleton(directory, checkpoint.dtype)
    budget = dense_budget or 0
    _install_layers(model, checkpoint, keep, target, dense_budget=budget,
                    only_kernel_layouts=keep_compressed is None)
    load_rest(model, checkpoint)
    return model.to(target).eval()


def _install_layers(model: nn.Module, checkpoint: CompressedCheckpoint, keep: bool, device: torch.device,
                    dense_budget: int = 0, only_kernel_layouts: bool = False) -> None:
    """Put each compressed layer in place: a CompressedLinear, or a dense nn.Linear expanded now
    (every layer when not `keep`; else the first ones whose dense bytes fit `dense_budget`, and
    with `only_kernel_layouts` those no GPU kernel reads, which would otherwise be expanded at
    every decode step). Layers are expanded on `device` (a GPU expands a 7B model in seconds); on
    CUDA, layers are converted to the layouts the GPU kernels read where that is lossless."""
    for name, packed in checkpoint.layers.items():
        parent, child = layer_slot(model, name)
        bias = checkpoint.tensors.pop(f"{name}.bias", None)
        rows, cols = packed.spec.shape
        dense_bytes = rows * cols * checkpoint.dtype.itemsize
        expand_now = not keep or dense_bytes <= dense_budget
        if keep and expand_now:
            dense_budget -= dense_bytes
        if not expand_now and device.type == "cuda" and packed.spec.layout == "bitmask" and packed.spec.quantized:
            packed = bitmask_as_quant(packed)  # no kernel reads a bitmask; dense codes it reads
        if not expand_now and only_kernel_layouts and not _has_kernel(packed):
            expand_now = True
        if not expand_now:
            new: nn.Module = CompressedLinear(packed, bias)
        else:
            new = dense_linear(packed, bias, device)
        setattr(parent, child, new)


def _has_kernel(packed: CompressedWeight) -> bool:
    from . import kernels

    return kernels.supports(packed.spec, 1)

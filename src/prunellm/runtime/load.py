"""`prunellm.load`: a working Hugging Face model from a directory prunellm wrote.

Three kinds of directory load:
- prunellm's compressed format (compression.json): layers become CompressedLinear modules, or
  plain dense layers expanded once at load (`keep_compressed=False`);
- compressed-tensors (its `quantization_config` in config.json): through transformers'
  dequantizing loader (vLLM serves these directories compressed);
- plain Hugging Face directories: through `prunellm.io.load_model`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunellm.devices import resolve_device
from prunellm.errors import PrunellmError
from prunellm.io.compressed.checkpoint import CompressedCheckpoint, is_compressed_dir, read_compressed
from prunellm.io.compressed.layer import CompressedWeight, bitmask_as_quant, decompress_weight

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
    if _is_compressed_tensors(directory):
        return _load_compressed_tensors(directory).to(target).eval()
    if not is_compressed_dir(directory):
        from prunellm.io import load_model

        model, _ = load_model(str(directory), compute_device=target)
        return model.to(target).eval()
    checkpoint = read_compressed(directory)
    model = _skeleton(directory, checkpoint.dtype)
    keep = keeps_compressed(target, keep_compressed)
    if dense_budget is not None and dense_budget < 0:
        raise PrunellmError(f"dense_budget must be >= 0 bytes, got {dense_budget}")
    budget = 0 if not keep else (dense_budget or 0)
    _install_layers(model, checkpoint, keep, target, dense_budget=budget,
                    only_kernel_layouts=keep_compressed is None)
    _load_rest(model, checkpoint)
    return model.to(target).eval()


def _is_compressed_tensors(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"


def _load_compressed_tensors(directory: Path) -> PreTrainedModel:
    """Through transformers' dequantizing loader: its compressed one cannot build asymmetric
    (zero-point) layers with compressed-tensors 0.20 (see io/compressed_tensors_export)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    try:
        return AutoModelForCausalLM.from_pretrained(directory, dtype="auto",
                                                    quantization_config=CompressedTensorsConfig(dequantize=True))
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        text = str(error).strip().splitlines()
        raise PrunellmError(f"cannot load the compressed-tensors model {directory}: "
                            f"{text[0] if text else error!r}") from None


def _skeleton(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The model of `directory`'s config with its parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(directory)
        with init_empty_weights():  # parameters on meta; buffers (rotary tables) real
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        text = str(error).strip().splitlines()
        raise PrunellmError(f"cannot build the model of {directory}: {text[0] if text else error!r}") from None
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def _install_layers(model: nn.Module, checkpoint: CompressedCheckpoint, keep: bool, device: torch.device,
                    dense_budget: int = 0, only_kernel_layouts: bool = False) -> None:
    """Put each compressed layer in place: a CompressedLinear, or a dense nn.Linear expanded now
    (every layer when not `keep`; else the first ones whose dense bytes fit `dense_budget`, and
    with `only_kernel_layouts` those no GPU kernel reads, which would otherwise be expanded at
    every decode step). Layers are expanded on `device` (a GPU expands a 7B model in seconds); on
    CUDA, layers are converted to the layouts the GPU kernels read where that is lossless."""
    for name, packed in checkpoint.layers.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            getattr(parent, child)
        except AttributeError:
            raise PrunellmError(f"compressed layer {name} is not a module of {type(model).__name__}") from None
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
            out_features, in_features = packed.spec.shape
            new = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
            on_device = CompressedWeight(packed.spec, {part: t.to(device) for part, t in packed.tensors.items()})
            new.weight = nn.Parameter(decompress_weight(on_device), requires_grad=False)
            if bias is not None:
                new.bias = nn.Parameter(bias, requires_grad=False)
        setattr(parent, child, new)


def _has_kernel(packed: CompressedWeight) -> bool:
    from . import kernels

    return kernels.supports(packed.spec, 1)


def _load_rest(model: nn.Module, checkpoint: CompressedCheckpoint) -> None:
    """Every other tensor by name; tied tensors re-tied; refuses a model left with a hole."""
    result = model.load_state_dict(checkpoint.tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise PrunellmError(f"{checkpoint.directory} holds tensors the model does not have: "
                            f"{', '.join(result.unexpected_keys[:3])}")
    model.tie_weights()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":
            raise PrunellmError(f"{checkpoint.directory} has no tensor for {name}")

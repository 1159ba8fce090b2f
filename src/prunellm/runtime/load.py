"""`prunellm.load`: a working Hugging Face model from a directory (or .gguf file) prunellm wrote.

Any format prunellm writes loads (the formats table, prunellm.formats, recognises it); in
prunellm's compressed format (compression.json) the layers become CompressedLinear modules
where a kernel reads them (on a CPU, repacked for the native library; on a GPU, read by Triton
kernels), or plain dense layers expanded once at load (`keep_compressed=False`: the format's
own reader).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunellm.devices import resolve_device
from prunellm.errors import PrunellmError
from prunellm.formats import detect_format, get_format
from prunellm.formats.compressed.checkpoint import TENSORS_FILE, CompressedCheckpoint, read_compressed
from prunellm.formats.compressed.layer import CompressedWeight, bitmask_as_quant
from prunellm.formats.compressed.model import build_skeleton, dense_linear, layer_slot, load_rest
from prunellm.io.dtypes import stored_dtype
from prunellm.io.mapped_pages import MappedFile

from . import cpu_kernels
from .dense_decode import use_kernels_for_dense
from .embedding import check_embed_bits, quantize_embeddings
from .head import check_head_bits, quantize_head
from .int8_activations import use_int8_activations
from .linear import CompressedLinear

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def keeps_compressed(device: torch.device, keep_compressed: bool | None) -> bool:
    """None: keep the layers a kernel reads compressed where kernels run (CUDA with Triton, a CPU
    with the native library), else expand every layer at load."""
    if keep_compressed is not None:
        return keep_compressed
    if device.type == "cuda":
        from . import kernels

        return kernels.available()
    return device.type == "cpu" and cpu_kernels.available()


def load(path: str | Path, device: str | torch.device | None = None, *, keep_compressed: bool | None = None,
         dense_budget: int | None = None, head_bits: int | None = None, embed_bits: int | None = None,
         dense_kernels: bool | None = None, int8_activations: bool = False) -> PreTrainedModel:
    """The causal LM saved at `path` (a directory in any format prunellm writes, or a .gguf
    file, dequantized), on `device` (default: CUDA when present), in eval mode.

    keep_compressed, for prunellm's compressed format: None (the default) keeps compressed the
    layers a kernel reads and expands the others once at load. On a CPU the native library
    (runtime/cpu_kernels.py) reads every layout: each layer is repacked once at load, the
    file's parts dropped, calls of a few tokens (decode; runtime/linear.py's thresholds) read it directly
    and larger ones (prefill) expand it for the call, bit for bit the dense layer; without the
    library (no compiler at install) every layer is expanded at load, with one warning. On a
    GPU with Triton, the layouts its kernels read stay compressed (unstructured float layers
    are expanded once). True holds every compressed layer compressed (memory first: one
    without a kernel is expanded at each call); False expands every layer once at load.

    dense_budget: with keep_compressed, bytes of memory that expanded layers may take: layers
    are expanded once at load, in model order, while they fit. Decoding visits every layer in
    turn, so a fixed set of dense layers is what a budget smaller than the model can buy (a
    least-recently-used cache would miss on every call).

    head_bits: 8 or 4 quantizes the output head for the native CPU kernels (runtime/head.py):
    CPU only, opt-in; a head tied to the input embeddings is untied.

    embed_bits: 8 or 4 quantizes the input embeddings' table (runtime/embedding.py: a lookup
    expands only the rows it reads): CPU only, opt-in, memory rather than speed. With a tied
    head quantized to the same bits the lookups read the head's codes and the float table goes;
    a tied head left in float keeps it.

    int8_activations: on a CPU with the native library, True rounds the activations of every
    layer of 4- or 8-bit codes (the quantized layers, a head quantized by head_bits) to int8
    blocks and multiplies the codes as they are (runtime/int8_activations.py): faster than the
    exact kernels, not exact; opt-in. A model with no such layer is refused.

    dense_kernels: on a CPU with the native library, None (the default) or True sends the
    decode calls of dense bfloat16/float16 layers (the head, layers stored dense, layers
    expanded at load) through the kernels too, reading the weights in place
    (runtime/dense_decode.py); False leaves them to torch.

    A model loaded with layers on a kernel is for running: its state_dict no longer holds
    those layers' weights (CompressedLinear). Nothing saves a loaded model.
    """
    from prunellm.streaming.heap import young_objects_only  # (the helpers the streamed prune uses)

    with young_objects_only():  # the load's heap trims collect only what it allocates
        return _load(path, device, keep_compressed=keep_compressed, dense_budget=dense_budget, head_bits=head_bits,
                     embed_bits=embed_bits, dense_kernels=dense_kernels, int8_activations=int8_activations)


def _load(path: str | Path, device: str | torch.device | None, *, keep_compressed: bool | None,
          dense_budget: int | None, head_bits: int | None, embed_bits: int | None,
          dense_kernels: bool | None, int8_activations: bool) -> PreTrainedModel:
    """`load`'s work."""
    target = resolve_device(device)
    directory = Path(path).expanduser()
    fmt = detect_format(directory)
    if not directory.is_dir() and (fmt is None or not fmt.single_file):  # a .gguf file loads too
        raise PrunellmError(f"not a model directory or .gguf file: {directory}")
    if dense_budget is not None and dense_budget < 0:
        raise PrunellmError(f"dense_budget must be >= 0 bytes, got {dense_budget}")
    if head_bits is not None:
        check_head_bits(head_bits, target)
    if embed_bits is not None:
        check_embed_bits(embed_bits, target)
    if int8_activations and target.type != "cpu":
        raise PrunellmError(f"int8_activations is for the native CPU kernels; the device is {target}")
    if target.type == "cpu" and keep_compressed is not False and fmt is not None and fmt.name == "compressed" \
            and not cpu_kernels.available():
        cpu_kernels.warn_unavailable()
    keep = keeps_compressed(target, keep_compressed)
    if fmt is None or fmt.name != "compressed" or not keep:
        # Every other format, and a compressed one expanded at load: the format's own reader.
        # A plain checkpoint run on the kernels keeps its stored dtype (bfloat16/float16 decode
        # on them; float32 is for torch's products, which is what "auto" gives on a CPU).
        on_kernels = target.type == "cpu" and dense_kernels is not False and cpu_kernels.available()
        dtype = stored_dtype(directory) if on_kernels and (fmt is None or fmt.name == "hf") else "auto"
        model = (fmt or get_format("hf")).load(directory, dtype=dtype, device=target).to(target).eval()
    else:
        checkpoint = read_compressed(directory)
        mapped = None
        if target.type == "cpu":
            # The file is memory-mapped and one live tensor keeps all of it mapped: own copies of
            # the tensors kept as they are, so that the map goes once the layers are repacked;
            # each tensor's pages handed back once it is copied or repacked, so that the file
            # does not sit resident beside the copies (io/mapped_pages.py).
            mapped = MappedFile(directory / TENSORS_FILE)
            copies = {}
            for name, tensor in checkpoint.tensors.items():
                copies[name] = tensor.clone()
                mapped.drop([tensor])
            checkpoint.tensors = copies
        model = build_skeleton(directory, checkpoint.dtype)
        _install_layers(model, checkpoint, keep, target, dense_budget=dense_budget or 0,
                        only_kernel_layouts=keep_compressed is None, mapped=mapped)
        load_rest(model, checkpoint)
        model = model.to(target).eval()
        if target.type == "cpu":
            _release_load_memory()
    if head_bits is not None or embed_bits is not None:
        _quantize_ends(model, head_bits, embed_bits)
        _release_load_memory()
    if int8_activations:
        use_int8_activations(model)
    if target.type == "cpu" and dense_kernels is not False:
        use_kernels_for_dense(model)
    return model


def _quantize_ends(model: PreTrainedModel, head_bits: int | None, embed_bits: int | None) -> None:
    """The head and the input embeddings quantized as asked; a tied pair of the same bits shares
    one table of codes (the head's)."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and hasattr(head, "weight") and hasattr(embedding, "weight") \
        and head.weight.data_ptr() == embedding.weight.data_ptr()
    quantized_head = quantize_head(model, head_bits) if head_bits is not None else None
    if embed_bits is not None:
        quantize_embeddings(model, embed_bits, tied_head=quantized_head if tied else None)
        for config in {id(c): c for c in (model.config, _text_config(model.config))}.values():
            config.tie_word_embeddings = False  # nothing may tie a head to a table no longer there


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


# Layers repacked between two trims of the heap during a CPU load: each trim costs a walk of the
# heap (milliseconds), each layer leaves its repacking's temporaries free in it.
TRIM_EVERY_LAYERS = 16


def _release_load_memory() -> None:
    """Give back what the load's temporaries left free inside glibc's heap: they were allocated
    between the buffers kept, and without a trim the process would hold about twice the
    compressed model's memory while decoding."""
    from prunellm.streaming.heap import release_free_memory  # (the helper the streamed prune uses)

    release_free_memory()


def _install_layers(model: nn.Module, checkpoint: CompressedCheckpoint, keep: bool, device: torch.device,
                    dense_budget: int = 0, only_kernel_layouts: bool = False,
                    mapped: MappedFile | None = None) -> None:
    """Put each compressed layer in place: a CompressedLinear, or a dense nn.Linear expanded now
    (every layer when not `keep`; else the first ones whose dense bytes fit `dense_budget`, and
    with `only_kernel_layouts` those no kernel reads, which would otherwise be expanded at every
    decode step). Layers are expanded on `device` (a GPU expands a 7B model in seconds); on
    CUDA, layers are converted to the layouts the GPU kernels read where that is lossless; on a
    CPU, repacked for the native kernels. Each layer's file parts are let go once it is in place
    (with `mapped`, their pages handed back too)."""
    for index, name in enumerate(list(checkpoint.layers)):
        packed = checkpoint.layers.pop(name)
        parent, child = layer_slot(model, name)
        bias = checkpoint.tensors.pop(f"{name}.bias", None)
        rows, cols = packed.spec.shape
        dense_bytes = rows * cols * checkpoint.dtype.itemsize
        expand_now = not keep or dense_bytes <= dense_budget
        if keep and expand_now:
            dense_budget -= dense_bytes
        if not expand_now and device.type == "cuda" and packed.spec.layout == "bitmask" and packed.spec.quantized:
            packed = bitmask_as_quant(packed)  # no kernel reads a bitmask; dense codes it reads
        if not expand_now and only_kernel_layouts and not _has_kernel(packed, device):
            expand_now = True
        if expand_now:
            new: nn.Module = dense_linear(packed, bias, device)
        else:
            new = _compressed_layer(name, packed, bias, device)
        setattr(parent, child, new)
        if mapped is not None:
            mapped.drop(packed.tensors.values())  # expanded, repacked or copied: not read again
            if index % TRIM_EVERY_LAYERS == TRIM_EVERY_LAYERS - 1:
                _release_load_memory()  # the repacking's temporaries, before the heap grows past them


def _compressed_layer(name: str, packed: CompressedWeight, bias: torch.Tensor | None,
                      device: torch.device) -> CompressedLinear:
    """A CompressedLinear; on a CPU repacked for the native kernels (parts that do not match
    their spec refused in one line naming the layer), else holding its own copy of the parts."""
    layer = CompressedLinear(packed, bias)
    if device.type != "cpu":
        return layer
    try:
        if layer.prepare_cpu():
            return layer
    except PrunellmError as error:
        raise PrunellmError(f"layer {name}: {error}") from None
    owned = CompressedWeight(packed.spec, {part: tensor.clone() for part, tensor in packed.tensors.items()})
    return CompressedLinear(owned, bias)


def _has_kernel(packed: CompressedWeight, device: torch.device) -> bool:
    if device.type == "cuda":
        from . import kernels

        return kernels.supports(packed.spec, 1)
    return device.type == "cpu" and cpu_kernels.available() and cpu_kernels.supports(packed.spec)

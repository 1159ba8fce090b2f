"""The output head quantized for decode on a CPU (`prunellm.load(..., head_bits=8)`).

The head (lm_head, vocabulary x hidden) is the largest single product of a small model's decode
step, and files keep it in float. Opt-in, at load: its weight is rounded to the nearest level of
an asymmetric min-max grid (formats/compressed "quant" layout: a float32 scale and an integer
zero point per row and group of inputs), and the layer runs through the native CPU kernels like
any compressed layer (decode reads the codes, a prefill expands them). Groups are 128 inputs,
or the largest multiple of 16 below 128 dividing the hidden size (SmolLM2's 576: 96), else one
per row. A head tied to the input embeddings is untied: the embedding lookup keeps its float
table, and the quantized head is extra memory (8 or 4 bits a weight), unless `embed_bits` of the
same width quantizes the embeddings too (runtime/embedding.py: they then read the head's codes).
"""

from __future__ import annotations

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.formats.compressed.layer import CompressedWeight, LayerSpec
from prunellm.formats.compressed.packing import container_bits, pack_bits
from prunellm.io.dtypes import dtype_name
from prunellm.solvers.quant import fit_minmax

from . import cpu_kernels
from .linear import CompressedLinear

HEAD_BITS = (8, 4)
GROUP_SIZE = 128
ROWS_AT_ONCE = 4096  # rows quantized together: a float32 copy of 4096 x 4096 is 64 MiB


def check_head_bits(bits: int, device: torch.device) -> None:
    """Refuse a request the runtime cannot honour, before anything is loaded."""
    if bits not in HEAD_BITS:
        raise PrunellmError(f"head_bits must be one of {', '.join(map(str, HEAD_BITS))}, got {bits}")
    if device.type != "cpu":
        raise PrunellmError(f"head_bits quantizes the head for the native CPU kernels; the device is {device}")
    if not cpu_kernels.available():
        raise PrunellmError("head_bits needs the native CPU kernels, which are not built (no C++ compiler at "
                            "install?)")


def group_size_for(cols: int) -> int | None:
    """128, or the largest multiple of 16 below it that divides `cols`; None: one group per row."""
    for size in range(GROUP_SIZE, 15, -16):
        if cols % size == 0:
            return size
    return None


def quantize_rows(weight: torch.Tensor, bits: int, group_size: int | None) -> CompressedWeight:
    """weight (R, C) rounded to the nearest level of a per-(row, group) min-max grid, packed in
    the "quant" layout. Its expansion is float32 scale * (code - zero) rounded to weight's dtype."""
    rows, cols = weight.shape
    size = group_size or cols
    container = container_bits(bits)
    # Codes packed a band of rows at a time: the whole head's codes unpacked would be a byte a
    # weight (233 MB for Qwen2.5's 151936 x 1536), their float32 copies four.
    qweight = torch.empty(rows, -(-cols * container // 8), dtype=torch.uint8)
    scales = torch.empty(rows, cols // size, dtype=torch.float32)
    zeros = torch.empty(rows, cols // size, dtype=torch.uint8)
    for start in range(0, rows, ROWS_AT_ONCE):
        stop = min(start + ROWS_AT_ONCE, rows)
        # a copy even of a float32 weight: the codes are computed in place, and a tied head's
        # weight is the embedding table
        groups = weight[start:stop].detach().to(torch.float32, copy=True).reshape(-1, size)  # (rows * G, size)
        scale, zero = fit_minmax(groups, bits, sym=False)  # (rows * G,) each
        groups.div_(scale[:, None]).round_().add_(zero[:, None]).clamp_(0, 2**bits - 1)  # the codes, in place
        qweight[start:stop] = pack_bits(groups.reshape(stop - start, cols).to(torch.uint8), container)
        scales[start:stop] = scale.reshape(stop - start, -1)
        zeros[start:stop] = zero.reshape(stop - start, -1).to(torch.uint8)
    spec = LayerSpec("quant", (rows, cols), dtype_name(weight.dtype), bits=bits, group_size=group_size, sym=False)
    return CompressedWeight(spec, {"qweight": qweight, "scales": scales, "zeros": zeros})


def quantize_head(model: nn.Module, bits: int) -> CompressedLinear:
    """Replace `model`'s output head by its `bits`-bit quantization on the native CPU kernels."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise PrunellmError(f"head_bits: the output head of {type(model).__name__} is a {type(head).__name__}, "
                            "not a linear layer")
    bias = head.bias.detach().clone() if head.bias is not None else None
    packed = quantize_rows(head.weight, bits, group_size_for(head.in_features))
    layer = CompressedLinear(packed, bias)
    if not layer.prepare_cpu():
        raise PrunellmError("head_bits: the native CPU kernels do not read the quantized head")
    model.set_output_embeddings(layer)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    config.tie_word_embeddings = False  # the embeddings keep their float table
    model.config.tie_word_embeddings = False
    return layer

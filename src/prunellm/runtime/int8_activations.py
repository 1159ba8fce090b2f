"""Int8 activations for the native CPU kernels' 4- and 8-bit layers (`prunellm.load(...,
int8_activations=True)`, `--int8-activations`): an opt-in trading exactness for speed.

The exact kernels multiply each layer's dequantized weights by the activations as they are
(bfloat16 or float32), and for masked 4-bit codes turning codes into weights is most of their
work (runtime/native/csrc/avx512bf16.cpp). With this option, every product of a layer of 4- or
8-bit codes first rounds its activations to int8, per token in blocks of BLOCK columns with one
float32 scale each (q = nearest-even(x * 127 / amax), x ~ q * amax / 127, as llama.cpp rounds the
activations its Q4 and Q8 products read), and multiplies the codes as they are
(runtime/native/csrc/int8.cpp: AVX512_VNNI's vpdpbusd; int8_avx2.cpp: AVX2's vpmaddubsw). The
weights are the grid's own values scale * (code - zero) in float32, not rounded to the layer's
dtype.

The rounding changes the model: the same rounding is applied on every path of such a layer, a
prefill's expanded product included (`cpu_kernels.int8_rounded`, bit for bit the reference
`round_activations`; a bfloat16 model's prefill then
multiplies those values rounded to bfloat16, as its products take them), so that a perplexity
scored on windows (`bench/cpu_model.py --int8-activations`) measures the model that decodes
(tests/runtime/test_int8_activations.py: a decode token by token gives the prefill's logits). Other layers
(bfloat16 values, dense layers, the embeddings) keep exact activations. On a CPU without AVX2
the int8 products run on a scalar kernel: the same sums, slower than the exact kernels, with one
warning.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from prunellm.errors import PrunellmError

from . import cpu_kernels, token_limits
from .cpu_layout import CODES
from .linear import CompressedLinear

log = logging.getLogger(__name__)

BLOCK = 128  # columns per activation scale (PNL_INT8_BLOCK in kernels.h)
LIMIT = 127.0


def round_activations(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) as the int8 kernels read it, in float32: per BLOCK columns of each row, q =
    nearest-even(x * (127 / amax)) in [-127, 127], times amax / 127 (the kernels' operations in
    float32, so the same q and scales). The reference: a prefill rounds through the kernels'
    own code (cpu_kernels.int8_rounded, the same bits, several times faster)."""
    q, scale = _rounded_blocks(x)  # (..., blocks, BLOCK), (..., blocks)
    return (q * scale.unsqueeze(-1)).flatten(-2)[..., :x.shape[-1]]


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., C) -> q int8 (..., C rounded up to BLOCK) and scale float32 (..., blocks)."""
    q, scale = _rounded_blocks(x)
    return q.to(torch.int8).flatten(-2), scale


def _rounded_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q as float32 (..., blocks, BLOCK), the columns padded with zeros to whole blocks, and the
    blocks' scales (..., blocks). An all-zero block gets scale 0 and q 0, as the kernels give it."""
    flat = x.float()
    columns = flat.shape[-1]
    padded = -(-columns // BLOCK) * BLOCK
    if padded != columns:
        flat = torch.nn.functional.pad(flat, (0, padded - columns))
    blocks = flat.unflatten(-1, (padded // BLOCK, BLOCK))  # (..., blocks, BLOCK)
    amax = blocks.abs().amax(dim=-1)  # (..., blocks)
    # 127 / amax as a tensor division, correctly rounded as the kernels' 127.0f / amax: torch's
    # scalar / tensor multiplies by a reciprocal, off by an ulp for a quarter of the values, which
    # moved a q across a tie about once in 10^4 activations
    nonzero = torch.where(amax > 0, amax, torch.ones_like(amax))  # any finite value for a zero block
    inverse = torch.full_like(amax, LIMIT) / nonzero
    q = torch.round(blocks * inverse.unsqueeze(-1)).clamp_(-LIMIT, LIMIT)  # torch.round: nearest even
    return q, amax / LIMIT


def reads(native: cpu_kernels.NativeWeight) -> bool:
    """Whether the int8 kernel reads this repacked layer (4- or 8-bit codes in groups of a
    multiple of 64 columns)."""
    layout = native.layout
    return layout.value_kind == CODES and layout.code_bits in (4, 8) and \
        (layout.groups == 1 or layout.group_size % 64 == 0)


def use_int8_activations(model: nn.Module) -> int:
    """Turn int8 activations on for every layer of `model` on the native CPU kernels that the
    int8 kernel reads; returns how many. Refuses a model with none (one line)."""
    if not cpu_kernels.available():
        raise PrunellmError("int8_activations needs the native CPU kernels, which are not built (no C++ compiler "
                            "at install)")
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear) and m.native is not None
              and reads(m.native)]
    if not layers:
        raise PrunellmError("int8_activations: no layer of this model is 4- or 8-bit codes on the CPU kernels "
                            "(it applies to quantized layers, and a head quantized by head_bits)")
    kernel = cpu_kernels.int8_kernel()
    for layer in layers:
        layer.use_int8_activations(token_limits.int8_limit(kernel))
    if kernel == "scalar":
        log.warning("int8 activations: this CPU (kernel level %s) lacks AVX2; the int8 products run on the scalar "
                    "kernel, slower than the exact ones", cpu_kernels.isa())
    return len(layers)

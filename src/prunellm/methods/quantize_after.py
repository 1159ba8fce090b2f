"""Quantize a pruned layer with GPTQ, keeping its zeros: how pruning methods take `bits`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import GPTQConfig, HeldOut, SolveResult, gptq
from ..solvers.checks import check_bits, check_gguf_options
from ..solvers.gguf_grids import check_gguf_problem
from .options import (ACT_ORDER, BITS, BLOCK_SIZE, DAMP_FRAC, GGUF, GROUP_SIZE, HESSIAN_SHRINK, SYM, option,
                      shrink_setting)


@dataclass
class QuantOptions:
    """bits 16 = no quantization; otherwise (or with a GGUF type) the pruned layer goes
    through GPTQ, its zeros kept. The rest are GPTQ's knobs (see solvers.GPTQConfig)."""

    bits: int = option(16, BITS)
    group_size: int | None = option(None, GROUP_SIZE)
    sym: bool = option(False, SYM)
    act_order: bool = option(True, ACT_ORDER)
    block_size: int = option(128, BLOCK_SIZE)
    damp_frac: float = option(0.01, DAMP_FRAC)
    gguf: str | None = option(None, GGUF, flag=False)
    hessian_shrink: float | str = option(0.0, HESSIAN_SHRINK, type=shrink_setting)

    def __post_init__(self) -> None:
        # The rest (block_size, hessian_shrink, ...) GPTQConfig checks when the layer is quantized.
        check_bits(self.bits)
        check_gguf_options(self.gguf, self.group_size, self.bits)
        if self.gguf is not None:
            check_gguf_problem(self.gguf, None, sparse=True)

    @property
    def quantizes(self) -> bool:
        return self.bits < 16 or self.gguf is not None


def quantize_after(pruned: SolveResult, hessian: torch.Tensor, *, bits: int, group_size: int | None, sym: bool,
                   block_size: int, damp_frac: float, gguf: str | None, act_order: bool = True,
                   hessian_shrink: float | str = 0.0, held_out: HeldOut | None = None) -> SolveResult:
    """GPTQ on the pruned weight, its zeros kept and its mask carried over. The one place that
    builds the GPTQ of a method's "quantize after" (QuantOptions' fields, or SparseGPT's after a
    refinement, which has no act_order or hessian_shrink: GPTQ's defaults then). held_out: what
    hessian_shrink="auto" scores its candidates on (solvers.gptq)."""
    config = GPTQConfig(bits=bits if bits < 16 else 4,  # bits unused with a GGUF type
                        gguf=gguf, group_size=group_size, sym=sym, act_order=act_order, block_size=block_size,
                        damp_frac=damp_frac, keep_zeros=True, hessian_shrink=hessian_shrink)
    quantized = gptq(pruned.weight, hessian, config, held_out=held_out)
    quantized.mask = pruned.mask
    return quantized

"""Quantize a pruned layer with GPTQ, keeping its zeros: how mask-only methods take `bits`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import GPTQConfig, SolveResult, gptq
from ..solvers.checks import check_bits, check_gguf_options
from ..solvers.gguf_grids import check_gguf_problem


@dataclass
class QuantizeAfter:
    """bits 16 = no quantization; otherwise (or with a GGUF type) the pruned layer goes
    through GPTQ, its zeros kept."""

    bits: int = 16
    group_size: int | None = None
    sym: bool = False
    act_order: bool = True
    block_size: int = 128
    damp_frac: float = 0.01
    gguf: str | None = None
    hessian_shrink: float = 0.0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_gguf_options(self.gguf, self.group_size, self.bits)
        if self.gguf is not None:
            check_gguf_problem(self.gguf, None, sparse=True)

    @property
    def quantizes(self) -> bool:
        return self.bits < 16 or self.gguf is not None

    def quantize(self, pruned: SolveResult, hessian: torch.Tensor) -> SolveResult:
        config = GPTQConfig(bits=self.bits if self.bits < 16 else 4, gguf=self.gguf, group_size=self.group_size, sym=self.sym, act_order=self.act_order,
                            block_size=self.block_size, damp_frac=self.damp_frac, keep_zeros=True,
                            hessian_shrink=self.hessian_shrink)
        quantized = gptq(pruned.weight, hessian, config)
        quantized.mask = pruned.mask
        return quantized

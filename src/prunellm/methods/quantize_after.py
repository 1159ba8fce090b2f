"""Quantize a pruned layer with GPTQ, keeping its zeros: how mask-only methods take `bits`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import GPTQConfig, SolveResult, gptq
from ..solvers.checks import check_bits


@dataclass
class QuantizeAfter:
    """bits 16 = no quantization; otherwise the pruned layer goes through GPTQ (zeros kept)."""

    bits: int = 16
    group_size: int | None = None
    sym: bool = False
    act_order: bool = True
    block_size: int = 128
    damp_frac: float = 0.01

    def __post_init__(self) -> None:
        check_bits(self.bits)

    @property
    def quantizes(self) -> bool:
        return self.bits < 16

    def quantize(self, pruned: SolveResult, hessian: torch.Tensor) -> SolveResult:
        config = GPTQConfig(bits=self.bits, group_size=self.group_size, sym=self.sym, act_order=self.act_order,
                            block_size=self.block_size, damp_frac=self.damp_frac, keep_zeros=True)
        quantized = gptq(pruned.weight, hessian, config)
        quantized.mask = pruned.mask
        return quantized

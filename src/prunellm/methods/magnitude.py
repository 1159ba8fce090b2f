from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import MagnitudeConfig, SolveResult, magnitude
from .base import Method, register
from .quantize_after import QuantizeAfter


@dataclass
class MagnitudeMethodConfig(MagnitudeConfig, QuantizeAfter):
    def __post_init__(self) -> None:
        MagnitudeConfig.__post_init__(self)
        QuantizeAfter.__post_init__(self)


@register
class Magnitude(Method):
    """Magnitude pruning (per layer, or per row); with `bits`, GPTQ after pruning."""

    name = "magnitude"
    config_class = MagnitudeMethodConfig

    @property
    def statistics(self) -> str:
        return "hessian" if self.config.quantizes else "none"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None) -> SolveResult:
        config = MagnitudeConfig(self.config.sparsity, self.config.nm, self.config.per_row)
        pruned = magnitude(weight, config)
        return self.config.apply(pruned, hessian) if self.config.quantizes else pruned

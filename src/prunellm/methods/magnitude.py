from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import MagnitudeConfig, SolveResult, magnitude
from .base import Method, register
from .quantize_after import QuantizeAfter
from .refinement import RefineOptions


@dataclass
class MagnitudeMethodConfig(MagnitudeConfig, RefineOptions, QuantizeAfter):
    def __post_init__(self) -> None:
        MagnitudeConfig.__post_init__(self)
        RefineOptions.__post_init__(self)
        QuantizeAfter.__post_init__(self)


@register
class Magnitude(Method):
    """Magnitude pruning (per layer, or per row); optionally refined on its mask, then quantized
    with GPTQ (`bits`)."""

    name = "magnitude"
    config_class = MagnitudeMethodConfig

    @property
    def statistics(self) -> str:
        return "hessian" if self.config.quantizes or self.config.refines else "none"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        result = magnitude(weight, MagnitudeConfig(self.config.sparsity, self.config.nm, self.config.per_row))
        if self.config.refines:
            result = self.config.apply(weight, hessian, result)
        return self.config.quantize(result, hessian) if self.config.quantizes else result

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import SolveResult, WandaConfig, wanda
from .base import Method, register
from .quantize_after import QuantizeAfter
from .refinement import RefineOptions


@dataclass
class WandaMethodConfig(WandaConfig, RefineOptions, QuantizeAfter):
    def __post_init__(self) -> None:
        WandaConfig.__post_init__(self)
        RefineOptions.__post_init__(self)
        QuantizeAfter.__post_init__(self)


@register
class Wanda(Method):
    """Wanda: |W|·||X|| per output row, no weight update; optionally refined on its mask, then
    quantized with GPTQ (`bits`)."""

    name = "wanda"
    config_class = WandaMethodConfig

    @property
    def statistics(self) -> str:
        return "hessian" if self.config.quantizes or self.config.refines else "diag"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        diag = torch.diagonal(hessian) if hessian.dim() == 2 else hessian
        result = wanda(weight, diag, WandaConfig(self.config.sparsity, self.config.nm))
        if self.config.refines:
            result = self.config.apply(weight, hessian, result)
        return self.config.quantize(result, hessian) if self.config.quantizes else result

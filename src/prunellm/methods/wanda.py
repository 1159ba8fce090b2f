from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import SolveResult, WandaConfig, wanda
from .base import Method, register
from .quantize_after import QuantizeAfter


@dataclass
class WandaMethodConfig(WandaConfig, QuantizeAfter):
    def __post_init__(self) -> None:
        WandaConfig.__post_init__(self)
        QuantizeAfter.__post_init__(self)


@register
class Wanda(Method):
    """Wanda: |W|·||X|| per output row, no weight update; with `bits`, GPTQ after pruning."""

    name = "wanda"
    config_class = WandaMethodConfig

    @property
    def statistics(self) -> str:
        return "hessian" if self.config.quantizes else "diag"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None) -> SolveResult:
        pruned = wanda(weight, hessian, WandaConfig(self.config.sparsity, self.config.nm))
        return self.config.apply(pruned, hessian) if self.config.quantizes else pruned

from __future__ import annotations

import torch

from ..solvers import SolveResult, SparseGPTConfig, sparsegpt
from .base import Method, register


@register
class SparseGPT(Method):
    """SparseGPT: adaptive mask plus OBS weight reconstruction, optionally quantized jointly."""

    name = "sparsegpt"
    config_class = SparseGPTConfig
    statistics = "hessian"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None) -> SolveResult:
        return sparsegpt(weight, hessian, self.config)

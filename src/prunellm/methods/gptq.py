from __future__ import annotations

from collections.abc import Callable

import torch

from ..solvers import GPTQConfig, SolveResult, gptq
from .base import Method, register


@register
class GPTQ(Method):
    """GPTQ: quantization alone; weights that are already zero stay zero."""

    name = "gptq"
    config_class = GPTQConfig
    statistics = "hessian"

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        return gptq(weight, hessian, self.config, consume_weight=consume_weight)

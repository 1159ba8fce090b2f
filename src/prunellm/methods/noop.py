from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import SolveResult
from .base import Method, register


@dataclass
class NoopConfig:
    pass


@register
class Noop(Method):
    """Leaves every weight as it is: a dense baseline through the same pipeline, and a test of
    the walker (outputs must not change)."""

    name = "noop"
    config_class = NoopConfig
    statistics = "hessian"  # still collects statistics, so layer errors (zero) are reported

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        return SolveResult(weight.clone(), torch.zeros_like(weight, dtype=torch.bool))

from __future__ import annotations

from collections.abc import Callable

import torch

from ..solvers import HeldOut, SolveResult
from .method import Method
from .registry import register


@register
class Noop(Method):
    """Leaves every weight as it is: a dense baseline through the same pipeline, and a test of
    the walker (outputs must not change)."""

    name = "noop"
    needs = "hessian"  # still collects statistics, so layer errors (zero) are reported

    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        return SolveResult(weight.clone(), torch.zeros_like(weight, dtype=torch.bool))

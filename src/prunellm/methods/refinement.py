"""Options every pruning method shares: re-solve the weights on the chosen mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from ..solvers import SolveResult, refine_on_mask

REFINEMENTS = ("none", "lsq")


@dataclass
class RefineOptions:
    """refine: "lsq" re-solves the kept weights exactly (conjugate gradients on the layer's
    least-squares problem, `refine_iters` iterations at most); "none" keeps the method's own."""

    refine: str = "none"
    refine_iters: int = 50

    def __post_init__(self) -> None:
        if self.refine not in REFINEMENTS:
            raise PrunellmError(f"unknown refinement {self.refine!r}; choose one of {', '.join(REFINEMENTS)}")
        if self.refine_iters < 1:
            raise PrunellmError(f"refine_iters must be positive, got {self.refine_iters}")

    @property
    def refines(self) -> bool:
        return self.refine != "none"

    def apply(self, weight: torch.Tensor, hessian: torch.Tensor, pruned: SolveResult) -> SolveResult:
        refined = refine_on_mask(weight, hessian, pruned.weight, pruned.mask, iterations=self.refine_iters)
        return SolveResult(refined, pruned.mask, None, pruned.damp_frac, pruned.damp_retries)

"""Options every pruning method shares: re-solve the weights on the chosen mask, or search a
better mask first (ALPS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from ..solvers import SolveResult, refine_on_mask
from ..solvers.alps import alps_refine

REFINEMENTS = ("none", "lsq", "alps")


@dataclass
class RefineOptions:
    """refine: "lsq" re-solves the kept weights exactly (conjugate gradients on the layer's
    least-squares problem, `refine_iters` iterations at most); "alps" first searches a new mask
    with the same budget by ADMM and solves the weights on it (2.0-3.1x a plain prune on CPU,
    bench/README.md), falling back to "lsq" where that is not better; "none" keeps the method's own."""

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
        if self.refine == "alps":
            # Same budget as the method's mask: n:m groups, per-row counts, or the layer's count.
            refined, mask = alps_refine(weight, hessian, pruned.weight, pruned.mask, nm=getattr(self, "nm", None),
                                        per_row=bool(getattr(self, "per_row", False)),
                                        cg_iterations=self.refine_iters)
            return SolveResult(refined, mask, None, pruned.damp_frac, pruned.damp_retries)
        refined = refine_on_mask(weight, hessian, pruned.weight, pruned.mask, iterations=self.refine_iters)
        return SolveResult(refined, pruned.mask, None, pruned.damp_frac, pruned.damp_retries)

"""Refinement after a prune: re-solve the weights on the chosen mask, or search a better mask
first (ALPS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from ..solvers import SolveResult, refine_on_mask
from ..solvers.alps import alps_refine
from .options import option

REFINEMENTS = ("none", "lsq", "alps")


@dataclass
class RefineOptions:
    """refine: "lsq" re-solves the kept weights exactly (conjugate gradients on the layer's
    least-squares problem, `refine_iters` iterations at most); "alps" first searches a new mask
    with the same budget by ADMM and solves the weights on it (2.0-3.1x a plain prune on CPU,
    bench/README.md), falling back to "lsq" where that is not better; "none" keeps the method's own."""

    refine: str = option("none", "none, lsq (re-solve the weights exactly on the mask) or alps (search a better "
                                 "mask by ADMM, then lsq); default for sparsegpt: the best of the high-sparsity "
                                 "benchmark at the target sparsity, else none", choices=REFINEMENTS)
    refine_iters: int = option(50, "conjugate-gradient iterations (default 50)")

    def __post_init__(self) -> None:
        if self.refine not in REFINEMENTS:
            raise PrunellmError(f"unknown refinement {self.refine!r}; choose one of {', '.join(REFINEMENTS)}")
        if self.refine_iters < 1:
            raise PrunellmError(f"refine_iters must be positive, got {self.refine_iters}")

    @property
    def refines(self) -> bool:
        return self.refine != "none"


def refine(weight: torch.Tensor, hessian: torch.Tensor, pruned: SolveResult, options: RefineOptions, *,
           nm: tuple[int, int] | None, per_row: bool) -> SolveResult:
    """The pruned layer refined towards the dense `weight`. nm, per_row: the prune's budget (n:m
    groups, per-row counts, or else the layer's count), which ALPS's new mask keeps."""
    if options.refine == "alps":
        refined, mask = alps_refine(weight, hessian, pruned.weight, pruned.mask, nm=nm, per_row=per_row,
                                    cg_iterations=options.refine_iters)
        return SolveResult(refined, mask, None, pruned.damp_frac, pruned.damp_retries)
    refined = refine_on_mask(weight, hessian, pruned.weight, pruned.mask, iterations=options.refine_iters)
    return SolveResult(refined, pruned.mask, None, pruned.damp_frac, pruned.damp_retries)

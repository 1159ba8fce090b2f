"""Magnitude pruning: zero the smallest |W|, over the whole layer or per output row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_problem, check_sparsity, parse_nm
from .masks import lowest_fraction_mask, nm_mask
from .result import SolveResult


@dataclass
class MagnitudeConfig:
    """sparsity: fraction zeroed (ignored when `nm` is set); nm: (n, m); per_row: compare
    weights within each output row instead of across the whole layer."""

    sparsity: float = 0.5
    nm: tuple[int, int] | str | None = None
    per_row: bool = False

    def __post_init__(self) -> None:
        self.nm = parse_nm(self.nm)
        check_sparsity(self.sparsity)


def magnitude(W: torch.Tensor, config: MagnitudeConfig | None = None) -> SolveResult:
    """W: (out, in). Exactly ⌊sparsity · count⌋ zeros in the layer (or in every row)."""
    config = config or MagnitudeConfig()
    check_problem(W, None, nm=config.nm)
    W = W.detach().to(torch.float32)
    scores = W.abs()
    if config.nm is not None:
        mask = nm_mask(scores, *config.nm)
    else:
        mask = lowest_fraction_mask(scores, config.sparsity, per_row=config.per_row)
    return SolveResult(W.masked_fill(mask, 0.0), mask)

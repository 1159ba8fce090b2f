"""Wanda (Sun et al., 2024): prune by |W| · ||X|| within each output row; no weight update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_problem, check_sparsity, parse_nm
from .masks import lowest_fraction_mask, nm_mask
from .result import SolveResult


@dataclass
class WandaConfig:
    """sparsity: fraction zeroed in every output row (ignored when `nm` is set); nm: (n, m)."""

    sparsity: float = 0.5
    nm: tuple[int, int] | str | None = None

    def __post_init__(self) -> None:
        self.nm = parse_nm(self.nm)
        check_sparsity(self.sparsity)


def wanda_scores(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ||X_j||, (R, C). ||X_j||² is proportional to H_jj, which is all Wanda needs:
    a per-column scale does not change the order within a row."""
    diag = torch.diagonal(H) if H.dim() == 2 else H  # (C,)
    return W.abs() * diag.clamp_min(0).sqrt().unsqueeze(0)


def wanda(W: torch.Tensor, H: torch.Tensor, config: WandaConfig | None = None) -> SolveResult:
    """W: (out, in); H: (in, in) Hessian or its diagonal (in,). Exactly ⌊sparsity·in⌋ zeros per row."""
    config = config or WandaConfig()
    check_problem(W, H, nm=config.nm)
    W = W.detach().to(torch.float32)
    scores = wanda_scores(W, H.to(W.device, torch.float32))
    if config.nm is not None:
        mask = nm_mask(scores, *config.nm)
    else:
        mask = lowest_fraction_mask(scores, config.sparsity, per_row=True)
    return SolveResult(W.masked_fill(mask, 0.0), mask)

"""Choosing GPTQ's Hessian shrinkage per layer, by the error on calibration windows it did not fit.

GPTQ fits the calibration Hessian's correlations; with a few thousand tokens many of them are
noise, and shrinking H toward its diagonal (hessian.shrink_to_diagonal) generalizes better on
some models and worse on others (bench/README.md, "GGUF export against llama.cpp": SmolLM2
gains from α = 0.5, Gemma-3 loses a little). Which α a layer wants is measured here, as a
validation split does: quantize against H of most windows (H_fit), shrunk by each candidate α,
and score the result on the windows left out (H_held); the best α then quantizes against H of
all windows. Cost: one solve per candidate more than plain GPTQ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from .hessian import layer_error, shrink_to_diagonal
from .result import SolveResult

AUTO = "auto"
CANDIDATES = (0.0, 0.25, 0.5, 0.75)  # α tried per layer; 1.0 (the diagonal alone) never won on any layer tried
HELD_OUT_EVERY = 4  # a quarter of the calibration windows scores the candidates


@dataclass
class HeldOut:
    """H over the held-out windows (C, C), and their share of all calibration tokens."""

    H: torch.Tensor
    share: float


def check_shrink(value: float | str) -> None:
    """A shrinkage setting: α in [0, 1], or "auto"."""
    if value == AUTO:
        return
    if isinstance(value, str) or not 0.0 <= float(value) <= 1.0:
        raise PrunellmError(f"hessian_shrink must be in [0, 1] or 'auto', got {value!r}")


def fit_hessian(H: torch.Tensor, held_out: HeldOut) -> torch.Tensor:
    """H over the windows not held out: H is the token-weighted mean of both parts. (C, C), new."""
    if not 0.0 < held_out.share < 1.0:
        raise PrunellmError(f"held-out share must be in (0, 1), got {held_out.share}")
    return (H - held_out.share * held_out.H.to(H.device)) / (1.0 - held_out.share)


def choose_shrink(W: torch.Tensor, H: torch.Tensor, held_out: HeldOut,
                  solve: Callable[[torch.Tensor, torch.Tensor], SolveResult],
                  candidates: Sequence[float] = CANDIDATES) -> tuple[float, list[float]]:
    """(α, held-out error of each candidate): the candidate whose solve against the shrunk
    H_fit leaves the least error tr((W - Ŵ) H_held (W - Ŵ)ᵀ) on the held-out windows.

    W: (R, C) float32, left unchanged. solve(W, H) -> SolveResult quantizes a copy of W. Ties go
    to the smaller α (the paper's GPTQ first)."""
    H_fit = fit_hessian(H, held_out)
    held = held_out.H.to(W.device)
    errors = []
    for alpha in candidates:
        result = solve(W, shrink_to_diagonal(H_fit, alpha))
        errors.append(layer_error(W, result.weight, held))
        del result
    best = min(range(len(candidates)), key=lambda i: (errors[i], candidates[i]))
    return float(candidates[best]), errors

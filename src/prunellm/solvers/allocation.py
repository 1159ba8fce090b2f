"""How much to prune where: non-uniform sparsity at a fixed global budget (OWL).

OWL (Yin et al., 2024) observes that layers whose Wanda scores |W|·||X|| have many outliers
(scores above M times their mean) matter more, and gives them lower sparsity: the outlier
ratios are mapped linearly onto [0, 2λ], centred, and subtracted from the target. The mean
sparsity, weighted by each unit's number of weights, equals the target exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PrunellmError


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float = 5.0) -> float:
    """Fraction of the scores (of all the given layers together) above threshold × their mean."""
    flat = torch.cat([s.flatten().to(torch.float32) for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(ratios: Sequence[float], sparsity: float, spread: float, sizes: Sequence[int] | None = None) -> list[float]:
    """Per-unit sparsities: more outliers, less pruning. `spread` is OWL's λ: the ratios map onto
    a range 2λ wide, centred on the target. sizes: weights per unit, so the budget holds exactly."""
    if not 0 <= 2 * spread <= min(sparsity, 0.99 - sparsity):
        raise PrunellmError(f"OWL spread λ={spread} is too wide for sparsity {sparsity}: "
                            f"2λ must stay within min(sparsity, 0.99 - sparsity)")
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes if sizes is not None else [1] * len(ratios), dtype=torch.float64)
    span = r.max() - r.min()
    if len(ratios) < 2 or span == 0:
        return [float(sparsity)] * len(ratios)
    keep_bonus = (r - r.min()) / span * 2 * spread  # (L,) in [0, 2λ]
    keep_bonus -= (keep_bonus * w).sum() / w.sum()  # size-weighted mean 0: the budget is unchanged
    return [float(sparsity - b) for b in keep_bonus]

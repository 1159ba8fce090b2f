"""Which weights to zero: the two mask rules every method shares.

Masks are boolean with True = pruned. Scores are "importance": the lowest go.
"""

from __future__ import annotations

import torch


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the n lowest-scoring weights in every group of m consecutive inputs of a row.

    scores: (R, C) with C divisible by m. Returns (R, C) bool with exactly n True per group.
    """
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)  # (R, C/m, m)
    lowest = torch.topk(groups, n, dim=-1, largest=False).indices  # (R, C/m, n)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, lowest, True)
    return mask.reshape(rows, cols)


def lowest_fraction_mask(scores: torch.Tensor, sparsity: float, *, per_row: bool = False) -> torch.Tensor:
    """Prune exactly floor(sparsity · count) lowest scores, over the whole matrix or per row.

    Exact counts (not a `<=` threshold) so that ties never overshoot the target.
    """
    if per_row:
        rows, cols = scores.shape
        k = int(cols * sparsity)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        if k > 0:
            # Stable sort: equal scores are pruned left to right, reproducibly on every device.
            order = torch.sort(scores, dim=1, stable=True).indices[:, :k]  # (R, k)
            mask.scatter_(1, order, True)
        return mask
    flat = scores.flatten()
    k = int(flat.numel() * sparsity)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.sort(flat, stable=True).indices[:k]] = True
    return mask.reshape(scores.shape)

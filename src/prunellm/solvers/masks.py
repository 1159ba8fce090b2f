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

    Exact counts (not a `<=` threshold) so that ties never overshoot the target; equal scores are
    pruned left to right (row-major over the whole matrix), reproducibly on every device.
    """
    rows, cols = scores.shape
    if per_row:
        return _lowest_k(scores, int(cols * sparsity))
    return _lowest_k(scores.reshape(1, -1), int(rows * cols * sparsity)).reshape(rows, cols)


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores: (R, N). The k lowest of each row, the leftmost of equal scores first: what the
    first k indices of a stable sort give, found by selection (the k-th value, then the ties at
    it) because sorting a layer's millions of scores costs ten times as much."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = scores.kthvalue(k, dim=1, keepdim=True).values  # (R, 1): the k-th lowest of each row
    mask = scores < threshold  # (R, N)
    missing = k - mask.sum(dim=1, keepdim=True)  # (R, 1): how many scores equal to it go too
    ties = scores == threshold  # (R, N)
    mask |= ties & (ties.cumsum(dim=1, dtype=torch.int32) <= missing)
    return mask

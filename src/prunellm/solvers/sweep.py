"""The OBS column sweep shared by SparseGPT and GPTQ (the readable reference path).

Columns are processed left to right. Each column is pruned (if its mask says so) and/or
rounded onto the grid; the error this makes is spread over the not-yet-processed columns
through the row of the inverse-Hessian Cholesky factor (the OBS update). Updates are applied
lazily: inside a block of `block_size` columns immediately, to the columns after the block
in one matrix product when the block is done. The mask is chosen as the sweep reaches it:
per block for unstructured sparsity, every m columns for n:m, using the weights as already
updated, which is what makes the mask adaptive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gguf_grids import GGUFGrid
from .masks import nm_mask
from .quant import fit_minmax, quantize


@dataclass
class SweepGrid:
    """Quantization inside the sweep.

    scale, zero: (R, G). group_of: (C,) the group of each column in sweep order.
    fit_on_the_fly: fit group g's scale from the current (updated, pruned) weights when the
    sweep reaches its first column, as GPTQ's code does; otherwise the grid is fixed upfront.
    """

    bits: int
    sym: bool
    scale: torch.Tensor
    zero: torch.Tensor
    group_of: torch.Tensor
    group_size: int | None = None
    fit_on_the_fly: bool = False

    def round(self, q: torch.Tensor, col: int) -> torch.Tensor:
        """Column q (R,) at sweep position col, moved onto its group's grid."""
        g = self.group_of[col]
        return quantize(q, self.scale[:, g], self.zero[:, g], self.bits)

    def fit(self, values: torch.Tensor, col: int) -> None:
        """Fit the grid of the group that starts at sweep column col from values (R, group_size)."""
        g = self.group_of[col]
        self.scale[:, g], self.zero[:, g] = fit_minmax(values, self.bits, self.sym)


@dataclass
class GGUFSweepGrid:
    """Quantization onto a GGUF block format inside the sweep.

    params: (R, G, n_params), G = C / grid.block. origin: (C,) the input column of each sweep
    column (a permutation under act-order), which gives its block and position in the block.
    fit_on_the_fly: fit each block from the current weights when the sweep reaches it (blocks
    are then in input order); otherwise params are fixed upfront. keep_zero: fit grids that
    hold zero exactly (for pruned layers).
    """

    grid: GGUFGrid
    params: torch.Tensor
    origin: torch.Tensor
    fit_on_the_fly: bool = False
    keep_zero: bool = False
    importance: torch.Tensor | None = None  # (C,) diag(H) by input column: weights the fit's error

    @property
    def group_size(self) -> int:
        """How often the sweep refits: every sub-block (K-quants refit its integer scales)."""
        return self.grid.sub

    def fit_span(self, col: int) -> int:
        """Columns the fit at sweep column col looks at: the whole block at its start."""
        return self.grid.block if int(self.origin[col]) % self.grid.block == 0 else self.grid.sub

    def round(self, q: torch.Tensor, col: int) -> torch.Tensor:
        source = int(self.origin[col])
        g, pos = divmod(source, self.grid.block)
        position = torch.tensor([pos], device=q.device)
        return self.grid.round(q[:, None], self.params[:, g], position)[:, 0]

    def fit(self, values: torch.Tensor, col: int) -> None:
        source = int(self.origin[col])
        g, pos = divmod(source, self.grid.block)
        h = None if self.importance is None else self.importance[source : source + values.shape[1]]
        if pos == 0:
            self.params[:, g] = self.grid.fit(values, self.keep_zero, h)
        else:  # a later sub-block: its own scale from its weights as they are now
            self.params[:, g] = self.grid.refit_sub(values, self.params[:, g], pos // self.grid.sub, h)


def obs_sweep(
    W: torch.Tensor,
    hinv: torch.Tensor,
    *,
    block_size: int = 128,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    fixed_mask: torch.Tensor | None = None,
    grid: SweepGrid | GGUFSweepGrid | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and/or quantize W in one sweep. Returns (Ŵ, pruned mask).

    W: (R, C) float32, consumed (updated in place). hinv: (C, C) upper Cholesky factor of
    the damped H⁻¹. Exactly one way of choosing zeros may be active: `sparsity` (adaptive,
    per block, by w²/[H⁻¹]²_jj), `nm` = (n, m), or `fixed_mask` (R, C) True = must be zero.
    """
    rows, cols = W.shape
    Q = torch.zeros_like(W)  # (R, C)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()  # (R, B): this block's weights, updated as we go
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]  # (B, B)
        d2 = torch.diagonal(Hinv1).pow(2)  # (B,)  [H_F⁻¹]_jj of each column when reached

        mask1 = block_start_mask(W1, d2, sparsity, nm, fixed_mask[:, i1:i2] if fixed_mask is not None else None)

        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                mask1[:, i : i + m] = nm_mask(W1[:, i : i + m].pow(2) / d2[i : i + m], n, m)
            if grid is not None and grid.fit_on_the_fly and (i1 + i) % grid.group_size == 0:
                _fit_group(grid, W1, W, mask1, i, i1, i2)

            w = W1[:, i]  # (R,)
            q = w.masked_fill(mask1[:, i], 0.0)
            if grid is not None:
                q = grid.round(q, i1 + i)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]  # (R,)
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)  # OBS update, (R, B-i)
            Err1[:, i] = err

        Q[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]  # lazy batched update of the later columns
    return Q, pruned


def block_start_mask(W1: torch.Tensor, d2: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                     fixed: torch.Tensor | None) -> torch.Tensor:
    """A block's mask (R, B) bool as its sweep starts: the given one (a copy), the unstructured
    choice by w²/[H⁻¹]²_jj over the whole block, or none yet (n:m groups are chosen on the way)."""
    if fixed is not None:
        return fixed.clone()
    if sparsity > 0 and nm is None:
        return _block_mask(W1.pow(2) / d2, sparsity)
    return torch.zeros_like(W1, dtype=torch.bool)


def _block_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference's per-block rule: prune scores <= the k-th smallest, k = ⌊sparsity · numel⌋.

    Kept as `<=` (one weight beyond the fraction per block) to reproduce the authors' masks.
    """
    k = int(scores.numel() * sparsity)
    threshold = torch.kthvalue(scores.flatten(), k + 1).values
    return scores <= threshold


def _fit_group(grid: SweepGrid | GGUFSweepGrid, W1: torch.Tensor, W: torch.Tensor, mask1: torch.Tensor, i: int, i1: int, i2: int) -> None:
    """Fit the grid of the group starting at block column i from the weights as they are now."""
    size = grid.fit_span(i1 + i) if isinstance(grid, GGUFSweepGrid) else grid.group_size
    inside = W1[:, i : i + size].masked_fill(mask1[:, i : i + size], 0.0)
    # Groups never straddle blocks (the caller aligns block_size), but stay correct if they do.
    spill = size - inside.shape[1]
    values = inside if spill <= 0 else torch.cat([inside, W[:, i2 : i2 + spill]], dim=1)
    grid.fit(values, i1 + i)

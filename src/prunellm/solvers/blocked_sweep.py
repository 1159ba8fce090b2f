"""The OBS sweep, blocked twice: the same result as `sweep.obs_sweep` in far fewer operations.

`obs_sweep` is the readable definition (and the test oracle). Inside a block of 128 columns it
applies each column's OBS update to every later column of the block: 128 rank-1 updates of up
to (R, 128), each a handful of tiny tensor operations, so a layer costs thousands of operator
calls whose overhead, not their arithmetic, is the time on a CPU (and kernel launches on a GPU).

Here each block is cut again into sub-blocks of `inner` columns. A column's update goes
immediately only to the rest of its sub-block; when the sub-block is done, its errors reach
the rest of the block in one matrix product, as the block's reach the rest of the layer. The
mask and the grid still see every weight exactly as updated when the sweep reaches it: an n:m
group or a quantization group that reaches past the sub-block first receives the updates still
pending. Only the order of floating-point additions differs from `obs_sweep`.

Pruning without quantization (SparseGPT's default, unstructured or n:m) has a shorter loop
still: a column's mask is known before its sweep starts (the block's, or its n:m group's), so
its error is w / [H⁻¹]_jj where pruned and 0 where kept: two operator calls per column, on a
transposed, contiguous copy of the block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import triton_sweep
from .masks import nm_mask
from .sweep import GGUFSweepGrid, SweepGrid, _fit_group, block_start_mask, obs_sweep

INNER = 16  # columns per sub-block: measured on 2 CPU cores, 8-32 are within a few percent


def sweep_function(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The sweep by name: "fast" (the default: `fast_obs_sweep`), "blocked", or "reference"
    (`sweep.obs_sweep`, the readable definition and the tests' oracle)."""
    sweeps = {"fast": fast_obs_sweep, "blocked": blocked_obs_sweep, "reference": obs_sweep}
    if name not in sweeps:
        raise ValueError(f"sweep must be one of {', '.join(sweeps)}, got {name!r}")
    return sweeps[name]


def fast_obs_sweep(W: torch.Tensor, hinv: torch.Tensor, *, block_size: int = 128, sparsity: float = 0.0,
                   nm: tuple[int, int] | None = None, fixed_mask: torch.Tensor | None = None,
                   grid: SweepGrid | GGUFSweepGrid | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`obs_sweep`'s result by the fastest path the device has: the Triton kernel on a CUDA device
    for the sweeps it covers (triton_sweep.supports), else the blocked sweep below."""
    if triton_sweep.available(W.device) and triton_sweep.supports(nm, grid, block_size):
        return triton_sweep.triton_obs_sweep(W, hinv, block_size=block_size, sparsity=sparsity, nm=nm,
                                             fixed_mask=fixed_mask, grid=grid)
    return blocked_obs_sweep(W, hinv, block_size=block_size, sparsity=sparsity, nm=nm, fixed_mask=fixed_mask,
                             grid=grid)


def blocked_obs_sweep(
    W: torch.Tensor,
    hinv: torch.Tensor,
    *,
    block_size: int = 128,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    fixed_mask: torch.Tensor | None = None,
    grid: SweepGrid | GGUFSweepGrid | None = None,
    inner: int = INNER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`obs_sweep` with sub-blocks of `inner` columns; same arguments, same result up to rounding.

    W: (R, C) float32, consumed: updated in place, and returned as Ŵ. hinv: (C, C) upper Cholesky
    factor of the damped H⁻¹. Returns (Ŵ, pruned mask), both (R, C).
    """
    rows, cols = W.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()  # (R, B)
        Hinv1 = hinv[i1:i2, i1:i2]  # (B, B)
        d2 = torch.diagonal(Hinv1).pow(2)  # (B,)
        mask1 = block_start_mask(W1, d2, sparsity, nm, fixed_mask[:, i1:i2] if fixed_mask is not None else None)

        if grid is None:
            Q1, Err1 = _prune_block(W1, Hinv1, d2, mask1, nm, inner)
        else:
            Q1, Err1 = _sweep_block(W1, W, Hinv1, d2, mask1, i1, i2, nm, grid, inner)
        # W's own columns take the result (the sweep never reads a finished block again), and the
        # lazy update is written into W in place: no (R, C) result and no (R, C) product temporary.
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:].addmm_(Err1, hinv[i1:i2, i2:], alpha=-1)  # lazy batched update of the later columns
    return W, pruned


def _prune_block(W1: torch.Tensor, Hinv1: torch.Tensor, d2: torch.Tensor, mask1: torch.Tensor,
                 nm: tuple[int, int] | None, inner: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block without a grid: returns (Q1, Err1), both (R, B). Under n:m, mask1 is filled in
    group by group, each chosen from its weights as updated when the sweep reaches it."""
    Wt = W1.t().contiguous()  # (B, R): the block's column j is row j, contiguous
    d = torch.diagonal(Hinv1)[:, None]  # (B, 1)
    scale = mask1.t().to(Wt.dtype) / d  # (B, R): 1/[H⁻¹]_jj where pruned, 0 where kept
    Et = torch.empty_like(Wt)  # (B, R): each column's error, (w - q) / [H⁻¹]_jj
    width = Wt.shape[0]
    if nm is not None:
        inner = -(-inner // nm[1]) * nm[1]  # whole groups per sub-block: a group's weights are current
    for s1 in range(0, width, inner):
        s2 = min(s1 + inner, width)
        for i in range(s1, s2):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                group = nm_mask(Wt[i : i + m].t().pow(2) / d2[i : i + m], n, m)  # (R, m)
                mask1[:, i : i + m] = group
                scale[i : i + m] = group.t().to(Wt.dtype) / d[i : i + m]
            torch.mul(Wt[i], scale[i], out=Et[i])
            if i + 1 < s2:
                Wt[i + 1 : s2].addr_(Hinv1[i, i + 1 : s2], Et[i], alpha=-1)  # OBS update, (s2-i-1, R)
        if s2 < width:
            Wt[s2:].addmm_(Hinv1[s1:s2, s2:].t(), Et[s1:s2], alpha=-1)  # the sub-block's errors, at once
    # Each column holds its value as the sweep reached it: kept weights as they are, pruned ones zero.
    return Wt.t().masked_fill(mask1, 0.0), Et.t()


def _sweep_block(W1: torch.Tensor, W: torch.Tensor, Hinv1: torch.Tensor, d2: torch.Tensor, mask1: torch.Tensor,
                 i1: int, i2: int, nm: tuple[int, int] | None, grid: SweepGrid | GGUFSweepGrid | None,
                 inner: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block with n:m masks chosen on the way and/or a grid: `obs_sweep`'s column loop, its
    updates confined to the sub-block. Returns (Q1, Err1), both (R, B); mask1 is filled in."""
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    width = W1.shape[1]
    for s1 in range(0, width, inner):
        s2 = min(s1 + inner, width)
        sent = s1  # the sub-block's columns before this one have updated the block's later columns

        def catch_up(upto: int) -> None:
            """Send the errors of columns [sent, upto) to the block's columns after the sub-block."""
            nonlocal sent
            if upto > sent and s2 < width:
                W1[:, s2:] -= Err1[:, sent:upto] @ Hinv1[sent:upto, s2:]
            sent = upto

        for i in range(s1, s2):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                if i + m > s2:
                    catch_up(i)  # the group reaches past the sub-block: its weights must be current
                mask1[:, i : i + m] = nm_mask(W1[:, i : i + m].pow(2) / d2[i : i + m], n, m)
            if grid is not None and grid.fit_on_the_fly and (i1 + i) % grid.group_size == 0:
                catch_up(i)  # the fit may look past the sub-block
                _fit_group(grid, W1, W, mask1, i, i1, i2)

            w = W1[:, i]  # (R,)
            q = w.masked_fill(mask1[:, i], 0.0)
            if grid is not None:
                q = grid.round(q, i1 + i)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]  # (R,)
            W1[:, i:s2] -= err.unsqueeze(1) * Hinv1[i, i:s2].unsqueeze(0)  # OBS update, (R, s2-i)
            Err1[:, i] = err
        catch_up(s2)
    return Q1, Err1

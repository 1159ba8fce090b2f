"""The OBS sweep as one Triton kernel per column block: a GPU's fast path.

`sweep.obs_sweep` walks a block's columns from Python, each column several tiny kernels: a
4096-column layer costs tens of thousands of launches, which is the reference code's time on a
GPU. Here one launch sweeps a whole block of columns for a tile of rows: the tile's weights stay
in registers while every column is pruned (and rounded), its error is computed and its OBS update
applied to the tile's later columns. Rows never interact inside a block (each row's mask and grid
are its own; the unstructured mask, chosen over the whole block at its start, comes in from
torch), so tiles run independently. The block's errors reach the later columns in one matrix
product, as in the reference.

Covered: masks fixed per block (unstructured sparsity, a given mask), n:m chosen on the way
(m up to 16), and quantization onto a grid fixed before the sweep (per row, or act-order's
static groups), with or without pruning. Grids fitted during the sweep (groups fitted on the fly,
GGUF blocks) go to `blocked_sweep`. `supports` says which.

Triton compiles for CUDA; with TRITON_INTERPRET=1 (set before triton is imported) the same kernel
runs on CPU tensors, slowly, which is how the tests check it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .sweep import GGUFSweepGrid, SweepGrid, block_start_mask

BLOCK_ROWS = 16  # rows per program: 256 programs for a 4096-row layer


def available(device: torch.device) -> bool:
    """Triton is installed and compiles for `device` (CUDA). The interpreter also runs on CPU, but
    far slower than `blocked_sweep`: only the tests call the kernel there, directly."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def supports(nm: tuple[int, int] | None, grid: SweepGrid | GGUFSweepGrid | None, block_size: int) -> bool:
    """Whether the kernel implements this sweep (else use `blocked_sweep`)."""
    if grid is not None and (not isinstance(grid, SweepGrid) or grid.fit_on_the_fly):
        return False
    if nm is not None and (nm[1] > 16 or block_size % nm[1]):
        return False
    return block_size <= 256


def triton_obs_sweep(
    W: torch.Tensor,
    hinv: torch.Tensor,
    *,
    block_size: int = 128,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    fixed_mask: torch.Tensor | None = None,
    grid: SweepGrid | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`obs_sweep` with one kernel launch per block of columns; same arguments and result (up to
    float rounding) for every case `supports` accepts. W: (R, C) float32, consumed (returned as
    Ŵ). hinv: (C, C)."""
    import triton

    if not supports(nm, grid, block_size):
        raise ValueError("this sweep needs blocked_sweep: grids fitted during the sweep, or n:m with m > 16")
    kernel = _kernel()
    rows, cols = W.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    bits = grid.bits if grid is not None else 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        width = i2 - i1
        W1 = W[:, i1:i2].contiguous()  # (R, B): swept in place into Q1
        Hinv1 = hinv[i1:i2, i1:i2].contiguous()  # (B, B)
        fixed = fixed_mask[:, i1:i2] if fixed_mask is not None else None
        d2 = torch.diagonal(Hinv1).pow(2)  # (B,)
        mask1 = block_start_mask(W1, d2, sparsity, nm, fixed).to(torch.int8).contiguous()  # the kernel fills n:m
        Err1 = torch.empty_like(W1)
        if grid is not None:
            columns = grid.group_of[i1:i2]  # (B,) each column's group
            scale = grid.scale[:, columns].contiguous()  # (R, B)
            zero = grid.zero[:, columns].contiguous()
        else:
            scale = zero = W1  # unused by the kernel when BITS == 0
        kernel[(triton.cdiv(rows, BLOCK_ROWS),)](
            W1, Hinv1, mask1, Err1, scale, zero, rows, width,
            NM_N=nm[0] if nm else 0, NM_M=nm[1] if nm else 0, BITS=bits,
            BLOCK_R=BLOCK_ROWS, BLOCK_B=max(16, triton.next_power_of_2(width)),
        )
        W[:, i1:i2] = W1  # the result, in W's finished columns (as blocked_sweep: no (R, C) temporaries)
        pruned[:, i1:i2] = mask1.bool()
        W[:, i2:].addmm_(Err1, hinv[i1:i2, i2:], alpha=-1)  # lazy batched update of the later columns
    return W, pruned


_KERNELS: dict[bool, object] = {}  # interpreted or compiled -> the kernel


def _kernel():
    """The kernel, defined on first use (importing this module needs no triton); triton decides
    when it is defined whether it compiles or interprets it, so each kind is kept apart."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret not in _KERNELS:
        _KERNELS[interpret] = _define_kernel()
    return _KERNELS[interpret]


def _define_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sweep_block(
        W_ptr, U_ptr, M_ptr, E_ptr, S_ptr, Z_ptr,  # (R, B), (B, B), (R, B) int8, (R, B), (R, B), (R, B)
        R, B,
        NM_N: tl.constexpr, NM_M: tl.constexpr, BITS: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
        cols = tl.arange(0, BLOCK_B)  # (BLOCK_B,)
        in_rows = rows < R
        in_cols = cols < B
        inside = in_rows[:, None] & in_cols[None, :]
        offsets = rows[:, None] * B + cols[None, :]  # (BLOCK_R, BLOCK_B), all row-major contiguous
        w = tl.load(W_ptr + offsets, mask=inside, other=0.0)  # the tile, updated as the sweep goes
        pruned = tl.load(M_ptr + offsets, mask=inside, other=0).to(tl.int32)
        if BITS > 0:
            scale = tl.load(S_ptr + offsets, mask=inside, other=1.0)
            zero = tl.load(Z_ptr + offsets, mask=inside, other=0.0)
        d = tl.load(U_ptr + cols * B + cols, mask=in_cols, other=1.0)  # (BLOCK_B,) diag of the factor
        err_tile = tl.zeros((BLOCK_R, BLOCK_B), dtype=tl.float32)
        q_tile = tl.zeros((BLOCK_R, BLOCK_B), dtype=tl.float32)
        for i in range(0, B):
            here = (cols == i)[None, :]  # (1, BLOCK_B)
            if NM_M > 0:
                if i % NM_M == 0:
                    # n:m: in each row, prune the n lowest w²/d² of columns i..i+m-1, as they are now.
                    group = (cols >= i) & (cols < i + NM_M)
                    score = w * w / (d * d)[None, :]  # (BLOCK_R, BLOCK_B)
                    for k in tl.static_range(NM_M):
                        at = (cols == i + k)[None, :]
                        mine = tl.sum(tl.where(at, score, 0.0), axis=1)[:, None]  # (BLOCK_R, 1)
                        # rank = how many in the group come before it (lower score; ties by column)
                        before = (score < mine) | ((score == mine) & (cols < i + k)[None, :])
                        rank = tl.sum(tl.where(group[None, :] & before, 1, 0), axis=1)
                        pruned = tl.where(at, (rank < NM_N).to(tl.int32)[:, None], pruned)
            wi = tl.sum(tl.where(here, w, 0.0), axis=1)  # (BLOCK_R,) column i as updated so far
            gone = tl.sum(tl.where(here, pruned, 0), axis=1) != 0
            q = tl.where(gone, 0.0, wi)
            if BITS > 0:
                si = tl.sum(tl.where(here, scale, 0.0), axis=1)
                zi = tl.sum(tl.where(here, zero, 0.0), axis=1)
                x = q / si
                # round half to even, as torch.round: adding and removing 1.5 * 2^23 leaves an integer
                x = (x + 12582912.0) - 12582912.0
                level = tl.minimum(tl.maximum(x + zi, 0.0), 2.0**BITS - 1.0)
                q = si * (level - zi)
            di = tl.sum(tl.where(cols == i, d, 0.0), axis=0)
            e = (wi - q) / di  # (BLOCK_R,)
            u = tl.load(U_ptr + i * B + cols, mask=in_cols & (cols > i), other=0.0)  # (BLOCK_B,) row i, after i
            w = w - e[:, None] * u[None, :]  # OBS update of the later columns
            err_tile = tl.where(here, e[:, None], err_tile)
            q_tile = tl.where(here, q[:, None], q_tile)
        tl.store(W_ptr + offsets, q_tile, mask=inside)
        tl.store(E_ptr + offsets, err_tile, mask=inside)
        tl.store(M_ptr + offsets, pruned.to(tl.int8), mask=inside)

    return sweep_block

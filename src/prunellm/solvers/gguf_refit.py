"""Re-solve the block scales of a GGUF layer for the codes the sweep chose.

GPTQ fixes each block's scale before its codes are chosen. Once every code is known, the
layer error tr((W - Ŵ) H (W - Ŵ)ᵀ) is a quadratic in the scales alone: per row, with A (C, G)
holding each block's codes in its own column, Ŵ_r = A d and the best d solves the G × G
system (Aᵀ H A) d = Aᵀ H w_r. Scales are then rounded to fp16, as the block stores them, and
the result is kept only where it lowers that row's error. Symmetric one-scale grids only
(q4_0, q5_0, q8_0): there the codes stay valid for any scale, zeros included.
"""

from __future__ import annotations

import torch

from .gguf_grids import GGUFBlocks

REFITTABLE = ("q4_0", "q5_0", "q8_0")


def refit_block_scales(W: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, blocks: GGUFBlocks,
                       row_chunk: int = 256) -> tuple[torch.Tensor, GGUFBlocks]:
    """(new weight, new blocks) for weight (R, C) on `blocks`, solved against W (R, C) and
    H (C, C). Same codes; a row's scales change only where its layer error goes down."""
    if blocks.type not in REFITTABLE:
        return weight, blocks
    rows, cols = W.shape
    size = blocks.grid.block
    groups = cols // size
    H = H.to(torch.float32)
    codes = blocks.codes(weight)  # (R, C)
    old = blocks.params[..., 0].to(W.device)  # (R, G)
    new = old.clone()
    Hg = H.reshape(groups, size, groups, size)  # (G, b, G, b)
    for start in range(0, rows, row_chunk):
        c = codes[start : start + row_chunk].reshape(-1, groups, size)  # (r, G, b)
        w = W[start : start + row_chunk].to(torch.float32)  # (r, C)
        cH = torch.einsum("rga,gahb->rghb", c, Hg)  # (r, G, G, b): codes of block g through H
        system = torch.einsum("rghb,rhb->rgh", cH, c)  # (r, G, G) = Aᵀ H A
        rhs = torch.einsum("rga,rga->rg", c, (w @ H).reshape(-1, groups, size))  # (r, G) = Aᵀ H w
        ridge = 1e-6 * system.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)  # (r,)
        eye = torch.eye(groups, device=W.device)
        # Blocks whose codes are all zero give empty rows: the ridge keeps the system solvable.
        solved = torch.linalg.solve(system + ridge[:, None, None] * eye, rhs.unsqueeze(-1)).squeeze(-1)
        new[start : start + row_chunk] = solved.to(torch.float16).to(torch.float32)

    def row_errors(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        approx = (scales.repeat_interleave(size, dim=1) * codes)  # (R, C)
        D = W.to(torch.float32) - approx
        return ((D @ H) * D).sum(dim=1), approx

    old_err, old_weight = row_errors(old)
    new_err, new_weight = row_errors(new)
    better = (new_err < old_err) & torch.isfinite(new).all(dim=1)  # (R,)
    scales = torch.where(better[:, None], new, old)
    refit = torch.where(better[:, None], new_weight, old_weight)
    params = blocks.params.clone()
    params[..., 0] = scales.to(params.device)
    return refit, GGUFBlocks(blocks.type, params)

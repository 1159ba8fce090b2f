"""GPTQ (Frantar et al., 2023): quantize a layer with the same OBS sweep, pruning nothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from .checks import aligned_block_size, check_bits, check_positive, check_problem
from .hessian import damped_inverse
from .quant import QuantGrid, fit_minmax
from .result import SolveResult
from .sweep import SweepGrid, obs_sweep


@dataclass
class GPTQConfig:
    """bits: 2-8. group_size: inputs per scale (None = one grid per row). sym: symmetric grid.
    act_order: quantize columns by decreasing diag(H), on by default: it lowers the layer error
    markedly (on the golden 3-bit case, 0.88 against 1.41). With groups, their grids are then
    fixed from the dense weight upfront, so that each group stays a contiguous run of inputs.
    keep_zeros: weights that are exactly zero (pruned earlier) stay zero.
    """

    bits: int = 4
    group_size: int | None = None
    sym: bool = False
    act_order: bool = True
    block_size: int = 128
    damp_frac: float = 0.01
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.bits == 16:
            raise PrunellmError("GPTQ needs bits between 2 and 8")
        check_positive("group_size", self.group_size, allow_none=True)
        check_positive("block_size", self.block_size)
        check_positive("damp_frac", self.damp_frac, allow_zero=True)


def gptq(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig | None = None) -> SolveResult:
    """Quantize one layer, compensating each rounding error on the columns not yet quantized.

    W: (out_features, in_features) float32; H: (in, in). Example: with H = I there is nothing
    to compensate and GPTQ is round-to-nearest; with correlated inputs it is strictly better.
    """
    config = config or GPTQConfig()
    check_problem(W, H, group_size=config.group_size)
    W = W.detach().to(torch.float32).clone()
    H = H.to(device=W.device, dtype=torch.float32)
    rows, cols = W.shape
    g = config.group_size
    bits, sym = config.bits, config.sym
    keep = (W == 0) if config.keep_zeros else None  # (R, C)

    group_of = torch.zeros(cols, dtype=torch.long, device=W.device) if g is None else torch.arange(cols, device=W.device) // g
    if g is None:
        scale, zero = fit_minmax(W, bits, sym)
        grid = SweepGrid(bits, sym, scale[:, None], zero[:, None], group_of)
    elif config.act_order:
        grouped = W.reshape(rows * cols // g, g)  # every (row, group) on its own line
        scale, zero = fit_minmax(grouped, bits, sym)
        grid = SweepGrid(bits, sym, scale.reshape(rows, cols // g), zero.reshape(rows, cols // g), group_of)
    else:
        grid = SweepGrid(bits, sym, torch.ones(rows, cols // g, device=W.device),
                         torch.zeros(rows, cols // g, device=W.device), group_of, group_size=g, fit_on_the_fly=True)

    perm = None
    if config.act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        keep = keep[:, perm] if keep is not None else None
        grid.group_of = grid.group_of[perm]

    inverse = damped_inverse(H, config.damp_frac)
    W[:, inverse.dead] = 0.0
    block = config.block_size if config.act_order else aligned_block_size(config.block_size, g)
    weight, mask = obs_sweep(W, inverse.upper, block_size=block, fixed_mask=keep, grid=grid)
    if perm is not None:
        inverse_perm = torch.argsort(perm)
        weight, mask = weight[:, inverse_perm], mask[:, inverse_perm]
    quant = QuantGrid(bits, sym, g, grid.scale, grid.zero)
    return SolveResult(weight, mask, quant, inverse.damp_frac, inverse.retries)

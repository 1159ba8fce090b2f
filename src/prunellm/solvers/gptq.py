"""GPTQ (Frantar et al., 2023): quantize a layer with the same OBS sweep, pruning nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import PrunellmError
from .blocked_sweep import sweep_function
from .checks import aligned_block_size, check_bits, check_gguf_options, check_positive, check_problem
from .gguf_grids import GGUFBlocks, check_gguf_problem, fit_gguf_blocks
from .gguf_refit import refit_block_scales
from .hessian import damped_inverse, shrink_to_diagonal
from .quant import QuantGrid, fit_minmax
from .result import SolveResult
from .shrink_choice import AUTO, HeldOut, check_shrink, choose_shrink
from .sweep import GGUFSweepGrid, SweepGrid


@dataclass
class GPTQConfig:
    """bits: 2-8. group_size: inputs per scale (None = one grid per row). sym: symmetric grid.
    act_order: quantize columns by decreasing diag(H), on by default: it lowers the layer error
    markedly (on the golden 3-bit case, 0.88 against 1.41). With groups, their grids are then
    fixed from the dense weight upfront, so that each group stays a contiguous run of inputs.
    keep_zeros: weights that are exactly zero (pruned earlier) stay zero.
    gguf: quantize onto a GGUF block format instead ('q4_0', 'q4_k', ...): its block size
    replaces group_size, its grid replaces bits and sym (see gguf_grids).
    hessian_shrink: α in [0, 1]: quantize against (1 - α)·H + α·diag(H) (see
    shrink_to_diagonal): with a few thousand calibration tokens GPTQ fits H's noisy
    correlations, and shrinking them generalizes better on some models (see bench/README.md,
    section "GGUF export against llama.cpp"). 0 = the paper's GPTQ. "auto": α chosen for the
    layer by its error on held-out calibration windows (shrink_choice; `gptq` needs held_out).
    refit_scales: with a one-scale GGUF grid (q4_0, q5_0, q8_0), re-solve the block scales for
    the chosen codes afterwards (see gguf_refit); a row keeps the result only if it helps.
    """

    bits: int = 4
    group_size: int | None = None
    sym: bool = False
    act_order: bool = True
    block_size: int = 128
    damp_frac: float = 0.01
    keep_zeros: bool = True
    gguf: str | None = None
    hessian_shrink: float | str = 0.0
    refit_scales: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_shrink(self.hessian_shrink)
        check_gguf_options(self.gguf, self.group_size)
        if self.bits == 16:
            raise PrunellmError("GPTQ needs bits between 2 and 8")
        check_positive("group_size", self.group_size, allow_none=True)
        check_positive("block_size", self.block_size)
        check_positive("damp_frac", self.damp_frac, allow_zero=True)


def gptq(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig | None = None, *,
         sweep: str = "fast", consume_weight: bool = False, held_out: HeldOut | None = None) -> SolveResult:
    """Quantize one layer, compensating each rounding error on the columns not yet quantized.

    W: (out_features, in_features) float32; H: (in, in). Example: with H = I there is nothing
    to compensate and GPTQ is round-to-nearest; with correlated inputs it is strictly better.
    sweep: "fast", "blocked" or "reference", as in `sparsegpt`. consume_weight: W (float32) may
    be overwritten. held_out: H of calibration windows also in H, that hessian_shrink="auto"
    scores its candidates on; the result's hessian_shrink says which α it chose.
    """
    config = config or GPTQConfig()
    if config.hessian_shrink == AUTO:
        if held_out is None:
            raise PrunellmError("hessian_shrink='auto' needs held-out calibration statistics "
                                "(at least 2 calibration windows); give a number instead")
        fixed = dataclasses.replace(config, hessian_shrink=0.0)
        alpha, _ = choose_shrink(W, H, held_out, lambda w, h: gptq(w, h, fixed, sweep=sweep))
        result = gptq(W, H, dataclasses.replace(config, hessian_shrink=alpha), sweep=sweep,
                      consume_weight=consume_weight)
        result.hessian_shrink = alpha
        return result
    H = shrink_to_diagonal(H, config.hessian_shrink)
    run_sweep = sweep_function(sweep)
    if config.gguf is not None:
        return _gptq_gguf(W, H, config, run_sweep, consume_weight)
    check_problem(W, H, group_size=config.group_size)
    W = W.detach().to(torch.float32, copy=not consume_weight)
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
    weight, mask = run_sweep(W, inverse.upper, block_size=block, fixed_mask=keep, grid=grid)
    if perm is not None:
        inverse_perm = torch.argsort(perm)
        weight, mask = weight[:, inverse_perm], mask[:, inverse_perm]
    quant = QuantGrid(bits, sym, g, grid.scale, grid.zero)
    return SolveResult(weight, mask, quant, inverse.damp_frac, inverse.retries)


def _gptq_gguf(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig, sweep: Callable,
               consume_weight: bool = False) -> SolveResult:
    """GPTQ onto a GGUF block format: the same sweep, rounding onto the blocks' grids.

    With act-order the blocks' parameters are fixed from the dense weight upfront (static
    groups: a block must stay a contiguous run of inputs); without, each block is fitted when
    the sweep reaches it, from the weights as updated so far.
    """
    check_problem(W, H)
    W = W.detach().to(torch.float32, copy=not consume_weight)
    H = H.to(device=W.device, dtype=torch.float32)
    W_dense = W.clone() if config.refit_scales else None  # (R, C), the refit's target
    H_dense = H  # H is permuted below, under act-order
    rows, cols = W.shape
    keep = (W == 0) if config.keep_zeros else None  # (R, C)
    keep_zero = keep is not None and bool(keep.any())
    grid = check_gguf_problem(config.gguf, cols, sparse=False)
    if keep_zero and not grid.holds_zero:
        keep, keep_zero = None, False  # zeros cannot survive this grid: round them like any weight
    origin = torch.arange(cols, device=W.device)
    importance = torch.diagonal(H).clone()  # (C,) what llama.cpp's importance matrix holds
    if config.act_order:
        params = fit_gguf_blocks(grid.name, W, keep_zero, importance).params
        sweep_grid = GGUFSweepGrid(grid, params, origin)
    else:
        params = torch.zeros(rows, cols // grid.block, grid.n_params, device=W.device)
        sweep_grid = GGUFSweepGrid(grid, params, origin, fit_on_the_fly=True, keep_zero=keep_zero,
                                   importance=importance)

    perm = None
    if config.act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        keep = keep[:, perm] if keep is not None else None
        sweep_grid.origin = perm

    inverse = damped_inverse(H, config.damp_frac)
    W[:, inverse.dead] = 0.0
    block = config.block_size if config.act_order else aligned_block_size(config.block_size, grid.block)
    weight, mask = sweep(W, inverse.upper, block_size=block, fixed_mask=keep, grid=sweep_grid)
    if perm is not None:
        inverse_perm = torch.argsort(perm)
        weight, mask = weight[:, inverse_perm], mask[:, inverse_perm]
    blocks = GGUFBlocks(grid.name, sweep_grid.params)
    if config.refit_scales:
        weight, blocks = refit_block_scales(W_dense, H_dense, weight, blocks)
    return SolveResult(weight, mask, blocks, inverse.damp_frac, inverse.retries)

"""SparseGPT (Frantar & Alistarh, 2023): prune, and optionally quantize, a layer in one sweep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blocked_sweep import sweep_function
from .checks import (aligned_block_size, check_bits, check_gguf_options, check_positive, check_problem,
                     check_sparsity, parse_nm)
from .gguf_grids import GGUFBlocks, check_gguf_problem
from .gptq import GPTQConfig, gptq
from .hessian import damped_inverse
from .quant import QuantGrid, fit_minmax
from .result import SolveResult
from .sweep import GGUFSweepGrid, SweepGrid


@dataclass
class SparseGPTConfig:
    """sparsity: unstructured fraction to zero (ignored when `nm` is set).
    nm: (n, m) or "n:m": n zeros in every m consecutive inputs.
    bits: 2-8 to quantize jointly, 16 for none. group_size: inputs per scale (None = per row).
    sym: symmetric grid. block_size: columns per lazy-update block (and per mask choice).
    damp_frac: fraction of mean(diag H) added to the diagonal.
    gguf: quantize jointly onto a GGUF block format ('q4_0', 'q6_k', ...) instead of `bits`.
    """

    sparsity: float = 0.5
    nm: tuple[int, int] | str | None = None
    bits: int = 16
    group_size: int | None = None
    sym: bool = False
    block_size: int = 128
    damp_frac: float = 0.01
    gguf: str | None = None

    def __post_init__(self) -> None:
        self.nm = parse_nm(self.nm)
        check_gguf_options(self.gguf, self.group_size, self.bits)
        if self.gguf is not None:
            check_gguf_problem(self.gguf, None, sparse=self.nm is not None or self.sparsity > 0)
        check_sparsity(self.sparsity)
        check_bits(self.bits)
        check_positive("group_size", self.group_size, allow_none=True)
        check_positive("block_size", self.block_size)
        check_positive("damp_frac", self.damp_frac, allow_zero=True)

    @property
    def quantizes_only(self) -> bool:
        """Nothing to prune, only to quantize: `sparsegpt` hands the layer to GPTQ."""
        return self.nm is None and self.sparsity == 0 and (self.bits < 16 or self.gguf is not None)


def sparsegpt(W: torch.Tensor, H: torch.Tensor, config: SparseGPTConfig | None = None, *,
              sweep: str = "fast", consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
    """Prune (and quantize) one layer so that its outputs on the calibration inputs change least.

    W: (out_features, in_features) float32; H: (in, in) = 2/N XᵀX of the layer's inputs.
    sweep: "fast" (a Triton kernel on CUDA where it covers the case, else the blocked sweep),
    "blocked", or "reference" (the readable column sweep, the tests' oracle): the same result
    up to float rounding. consume_weight: W (float32) may be overwritten: the sweep works in it.
    restore_hessian: H may be overwritten too: its inverse factor is computed in its storage, and
    `restore_hessian(t)` fills t with H's original values when a retry needs them. H then holds
    no meaning on return; the caller restores it if it needs it.

    A tiny example: W = [[4, 1, 3, 2]], H = I, 50% sparsity. With H = I the scores
    w²/[H⁻¹]²_jj are just w², so the two smallest (1 and 2) go: Ŵ = [[4, 0, 3, 0]]. With a
    correlated H, the error of removing a weight is compensated on the weights that remain.
    """
    config = config or SparseGPTConfig()
    nm = config.nm
    check_problem(W, H, nm=nm, group_size=config.group_size)
    if config.quantizes_only:
        # Nothing to prune: the column order is then free, and GPTQ's activation order
        # (largest diag(H) first) gives a clearly lower layer error than the left-to-right sweep.
        return gptq(W, H, GPTQConfig(bits=config.bits if config.bits < 16 else 4, group_size=config.group_size, sym=config.sym,
                                     act_order=True, block_size=config.block_size, damp_frac=config.damp_frac,
                                     gguf=config.gguf), sweep=sweep, consume_weight=consume_weight)
    W = W.detach().to(torch.float32, copy=not consume_weight)
    rows, cols = W.shape

    grid = None
    if config.gguf is not None:
        gguf = check_gguf_problem(config.gguf, cols, sparse=True)
        grid = GGUFSweepGrid(gguf, torch.zeros(rows, cols // gguf.block, gguf.n_params, device=W.device),
                             torch.arange(cols, device=W.device), fit_on_the_fly=True, keep_zero=True,
                             importance=torch.diagonal(H).to(W.device, torch.float32).clone())
    elif config.bits < 16:
        if config.group_size is None:
            # Per-row grid fixed from the dense weight before pruning, as the paper's code.
            scale, zero = fit_minmax(W, config.bits, config.sym)
            grid = SweepGrid(config.bits, config.sym, scale[:, None], zero[:, None],
                             torch.zeros(cols, dtype=torch.long, device=W.device))
        else:
            groups = cols // config.group_size
            grid = SweepGrid(config.bits, config.sym,
                             torch.ones(rows, groups, device=W.device), torch.zeros(rows, groups, device=W.device),
                             torch.arange(cols, device=W.device) // config.group_size,
                             group_size=config.group_size, fit_on_the_fly=True)

    inverse = damped_inverse(H.to(W.device), config.damp_frac, restore=restore_hessian)
    W[:, inverse.dead] = 0.0  # inputs that never fire: their weights do nothing
    block = aligned_block_size(config.block_size, nm[1] if nm else None, config.group_size,
                               grid.group_size if grid is not None else None)
    weight, mask = sweep_function(sweep)(W, inverse.upper, block_size=block,
                             sparsity=0.0 if nm else config.sparsity, nm=nm, grid=grid)
    quant = None
    if isinstance(grid, GGUFSweepGrid):
        quant = GGUFBlocks(grid.grid.name, grid.params)
    elif grid is not None:
        quant = QuantGrid(config.bits, config.sym, config.group_size, grid.scale, grid.zero)
    return SolveResult(weight, mask, quant, inverse.damp_frac, inverse.retries)

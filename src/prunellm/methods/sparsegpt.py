from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..solvers import HeldOut, SolveResult, SparseGPTConfig, sparsegpt
from .method import Method
from .options import BITS, BLOCK_SIZE, DAMP_FRAC, GGUF, GROUP_SIZE, NM, SPARSITY, SYM, option, solver_config
from .refinement import RefineOptions
from .registry import register


@dataclass
class SparseGPTOptions:
    """The joint sweep's options: solvers.SparseGPTConfig's fields."""

    sparsity: float = option(0.5, SPARSITY)
    nm: tuple[int, int] | str | None = option(None, NM, type=str)
    bits: int = option(16, BITS)
    group_size: int | None = option(None, GROUP_SIZE)
    sym: bool = option(False, SYM)
    block_size: int = option(128, BLOCK_SIZE)
    damp_frac: float = option(0.01, DAMP_FRAC)
    gguf: str | None = option(None, GGUF, flag=False)

    def __post_init__(self) -> None:
        self.nm = self.solver_config().nm  # the solver's checks; "2:4" -> (2, 4)

    def solver_config(self) -> SparseGPTConfig:
        return solver_config(self, SparseGPTConfig)

    @property
    def quantizes_only(self) -> bool:
        """Nothing to prune, only to quantize: `sparsegpt` hands the layer to GPTQ."""
        return self.nm is None and self.sparsity == 0 and (self.bits < 16 or self.gguf is not None)


@register
class SparseGPT(Method):
    """SparseGPT: adaptive mask plus OBS weight reconstruction, optionally quantized jointly.

    With a refinement, the order is prune, refine on the mask, then quantize (GPTQ keeping the
    zeros): refined weights leave the grid, so joint quantization cannot come first.
    """

    name = "sparsegpt"
    option_groups = (SparseGPTOptions, RefineOptions)
    needs = "hessian"

    @property
    def overwrites_lent_hessian(self) -> bool:
        # A refinement needs the Hessian after the prune; without pruning, GPTQ's path takes over.
        return not self.config.refines and not self.config.quantizes_only

    def quantized_after(self) -> dict[str, Any] | None:
        config = self.config
        if not config.refines or (config.bits == 16 and config.gguf is None):
            return None
        return {"bits": config.bits, "group_size": config.group_size, "sym": config.sym,
                "block_size": config.block_size, "damp_frac": config.damp_frac, "gguf": config.gguf}

    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        config = self.config.group(SparseGPTOptions).solver_config()
        if self.config.refines:  # quantized after the refinement instead
            config = dataclasses.replace(config, bits=16, gguf=None)
        return sparsegpt(weight, hessian, config, consume_weight=consume_weight, restore_hessian=restore_hessian)

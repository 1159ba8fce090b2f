from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import GPTQConfig, SolveResult, SparseGPTConfig, gptq, sparsegpt
from .base import Method, register
from .refinement import RefineOptions


@dataclass
class SparseGPTMethodConfig(SparseGPTConfig, RefineOptions):
    def __post_init__(self) -> None:
        SparseGPTConfig.__post_init__(self)
        RefineOptions.__post_init__(self)


@register
class SparseGPT(Method):
    """SparseGPT: adaptive mask plus OBS weight reconstruction, optionally quantized jointly.

    With a refinement, the order is prune, refine on the mask, then quantize (GPTQ keeping the
    zeros): refined weights leave the grid, so joint quantization cannot come first.
    """

    name = "sparsegpt"
    config_class = SparseGPTMethodConfig
    statistics = "hessian"

    @property
    def overwrites_lent_hessian(self) -> bool:
        # A refinement needs the Hessian after the prune; without pruning, GPTQ's path takes over.
        return not self.config.refines and not self.config.quantizes_only

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        config = self.config
        solver_config = SparseGPTConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(SparseGPTConfig)})
        if not config.refines:
            return sparsegpt(weight, hessian, solver_config, consume_weight=consume_weight,
                             restore_hessian=restore_hessian)
        # A refinement aims at the dense weight again, with the Hessian: the prune works on copies.
        pruned = sparsegpt(weight, hessian, dataclasses.replace(solver_config, bits=16, gguf=None))
        refined = config.apply(weight, hessian, pruned)
        if config.bits == 16 and config.gguf is None:
            return refined
        bits = config.bits if config.bits < 16 else 4  # unused with a GGUF type
        quantized = gptq(refined.weight, hessian, GPTQConfig(bits=bits, gguf=config.gguf, group_size=config.group_size,
                                                             sym=config.sym, block_size=config.block_size,
                                                             damp_frac=config.damp_frac, keep_zeros=True))
        quantized.mask = refined.mask
        return quantized

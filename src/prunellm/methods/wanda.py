from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import HeldOut, SolveResult, WandaConfig, wanda
from .method import Method
from .options import NM, SPARSITY, option, solver_config
from .quantize_after import QuantOptions
from .refinement import RefineOptions
from .registry import register


@dataclass
class WandaOptions:
    """The prune's options: solvers.WandaConfig's fields."""

    sparsity: float = option(0.5, SPARSITY)
    nm: tuple[int, int] | str | None = option(None, NM, type=str)

    def __post_init__(self) -> None:
        self.nm = self.solver_config().nm  # the solver's checks; "2:4" -> (2, 4)

    def solver_config(self) -> WandaConfig:
        return solver_config(self, WandaConfig)


@register
class Wanda(Method):
    """Wanda: |W|·||X|| per output row, no weight update; optionally refined on its mask, then
    quantized with GPTQ (`bits`)."""

    name = "wanda"
    option_groups = (WandaOptions, RefineOptions, QuantOptions)
    needs = "diag"

    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        diag = torch.diagonal(hessian) if hessian.dim() == 2 else hessian
        return wanda(weight, diag, self.config.group(WandaOptions).solver_config())

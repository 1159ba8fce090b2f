from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import HeldOut, MagnitudeConfig, SolveResult, magnitude
from .method import Method
from .options import NM, SPARSITY, option, solver_config
from .quantize_after import QuantOptions
from .refinement import RefineOptions
from .registry import register


@dataclass
class MagnitudeOptions:
    """The prune's options: solvers.MagnitudeConfig's fields."""

    sparsity: float = option(0.5, SPARSITY)
    nm: tuple[int, int] | str | None = option(None, NM, type=str)
    per_row: bool = option(False, "magnitude: compare within rows")

    def __post_init__(self) -> None:
        self.nm = self.solver_config().nm  # the solver's checks; "2:4" -> (2, 4)

    def solver_config(self) -> MagnitudeConfig:
        return solver_config(self, MagnitudeConfig)


@register
class Magnitude(Method):
    """Magnitude pruning (per layer, or per row); optionally refined on its mask, then quantized
    with GPTQ (`bits`)."""

    name = "magnitude"
    option_groups = (MagnitudeOptions, RefineOptions, QuantOptions)
    needs = "none"

    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        return magnitude(weight, self.config.group(MagnitudeOptions).solver_config())

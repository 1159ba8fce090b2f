from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers import GPTQConfig, HeldOut, SolveResult, gptq
from ..solvers.shrink_choice import AUTO, HELD_OUT_EVERY
from .method import Method
from .options import (ACT_ORDER, BITS, BLOCK_SIZE, DAMP_FRAC, GGUF, GROUP_SIZE, HESSIAN_SHRINK, SYM, option,
                      shrink_setting, solver_config)
from .registry import register


@dataclass
class GPTQOptions:
    """solvers.GPTQConfig's fields."""

    bits: int = option(4, BITS)
    group_size: int | None = option(None, GROUP_SIZE)
    sym: bool = option(False, SYM)
    act_order: bool = option(True, ACT_ORDER)
    block_size: int = option(128, BLOCK_SIZE)
    damp_frac: float = option(0.01, DAMP_FRAC)
    keep_zeros: bool = option(True, "GPTQ: weights that are already zero stay zero", flag=False)
    gguf: str | None = option(None, GGUF, flag=False)
    hessian_shrink: float | str = option(0.0, HESSIAN_SHRINK, type=shrink_setting)
    refit_scales: bool = option(True, "GPTQ with q4_0, q5_0, q8_0: re-solve the block scales for the chosen codes",
                                flag=False)

    def __post_init__(self) -> None:
        self.solver_config()  # the solver's checks

    def solver_config(self) -> GPTQConfig:
        return solver_config(self, GPTQConfig)


@register
class GPTQ(Method):
    """GPTQ: quantization alone; weights that are already zero stay zero."""

    name = "gptq"
    option_groups = (GPTQOptions,)
    needs = "hessian"

    @property
    def held_out_every(self) -> int:
        return HELD_OUT_EVERY if self.config.hessian_shrink == AUTO else 0

    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        return gptq(weight, hessian, self.config.group(GPTQOptions).solver_config(), consume_weight=consume_weight,
                    held_out=held_out)

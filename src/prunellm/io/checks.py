"""Sanity checks on loaded weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunellm.errors import PrunellmError
from prunellm.solvers.hessian import all_finite

if TYPE_CHECKING:
    from torch import nn


def check_finite(model: nn.Module) -> None:
    """Raise PrunellmError naming the first parameter that holds a NaN or an infinity.

    A single NaN poisons every Hessian and every perplexity downstream, far from its cause.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.device.type != "meta":  # meta: offloaded, nothing to check here
                check_weight_finite(name, param)


def check_weight_finite(name: str, weight: torch.Tensor) -> None:
    """Raise PrunellmError naming `name` if the floating-point `weight` holds a NaN or an infinity."""
    if not weight.is_floating_point() or all_finite(weight):
        return
    bad = int((~torch.isfinite(weight)).sum())
    raise PrunellmError(f"model weight '{name}' contains {bad} NaN or infinite value(s)")

"""Validation shared by the solvers' configs and entry points: one clear message per mistake."""

from __future__ import annotations

import math

import torch

from ..errors import PrunellmError
from .hessian import all_finite


def parse_nm(nm: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """'2:4' or (2, 4) -> (2, 4): n zeros in every m consecutive inputs; None stays None."""
    if nm is None:
        return None
    if isinstance(nm, str):
        parts = nm.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise PrunellmError(f"n:m pattern must look like '2:4', got {nm!r}")
        nm = (int(parts[0]), int(parts[1]))
    n, m = (int(v) for v in nm)
    if not 0 < n < m:
        raise PrunellmError(f"n:m pattern needs 0 < n < m, got {n}:{m}")
    return n, m


def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise PrunellmError(f"sparsity must be in [0, 1), got {sparsity}")


def check_bits(bits: int) -> None:
    if bits != 16 and not 2 <= bits <= 8:
        raise PrunellmError(f"bits must be between 2 and 8 (or 16 for no quantization), got {bits}")


def check_positive(name: str, value: int | float | None, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise PrunellmError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def check_problem(
    W: torch.Tensor,
    H: torch.Tensor | None,
    *,
    nm: tuple[int, int] | None = None,
    group_size: int | None = None,
) -> None:
    """A layer problem the solvers can take: shapes agree, finite numbers, patterns that fit."""
    if W.dim() != 2:
        raise PrunellmError(f"weight must be 2-D (out_features, in_features), got shape {tuple(W.shape)}")
    rows, cols = W.shape
    if H is not None:
        if H.shape not in ((cols, cols), (cols,)):
            raise PrunellmError(f"Hessian shape {tuple(H.shape)} does not match {cols} input features")
        if not all_finite(H):
            raise PrunellmError("Hessian contains NaN or Inf (calibration activations overflowed?)")
    if not all_finite(W):
        raise PrunellmError("weight contains NaN or Inf")
    if nm is not None and cols % nm[1] != 0:
        raise PrunellmError(f"in_features {cols} is not divisible by m={nm[1]} of the {nm[0]}:{nm[1]} pattern")
    if group_size is not None and cols % group_size != 0:
        raise PrunellmError(f"group_size {group_size} does not divide in_features {cols}")


def aligned_block_size(block_size: int, *units: int | None) -> int:
    """block_size rounded to a multiple of every unit (n:m's m, group_size): patterns and groups
    then never straddle two blocks. The result of n:m and grouped sweeps does not depend on it."""
    step = 1
    for unit in units:
        if unit:
            step = math.lcm(step, unit)
    return max(1, block_size // step) * step


def check_gguf_options(gguf: str | None, group_size: int | None, bits: int | None = None) -> None:
    """A GGUF type fixes its own block size and grid: refuse a conflicting group_size or bits."""
    if gguf is None:
        return
    from .gguf_grids import gguf_grid  # the grids module imports this one's error type

    grid = gguf_grid(gguf)
    if group_size is not None and group_size != grid.block:
        raise PrunellmError(f"{grid.name} stores one scale per {grid.block} inputs; group_size {group_size} "
                            f"cannot be held (leave group_size unset with a GGUF type)")
    if bits is not None and bits != 16:
        raise PrunellmError(f"bits {bits} and GGUF type {grid.name} both set: the GGUF type fixes the grid")

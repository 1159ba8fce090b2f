"""Where the work runs: the --device option, parsed once for every command, and a model's visit there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import PrunellmError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch device: None or "auto" is CUDA when present, else CPU.

    Refuses with one line a name torch does not know ("gpu") and CUDA where there is none, rather
    than torch's RuntimeError (or AssertionError on a CPU build) deep inside the first move.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunellmError(f"unknown device '{device}': use cpu, cuda or cuda:N") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise PrunellmError(f"device '{device}' requested but CUDA is not available")
    return target


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`model` on `device` inside the block, back where it was after (even on error): models
    stay on CPU between steps, and visit the GPU to be evaluated."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)

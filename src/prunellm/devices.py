"""Where the work runs: the --device option, parsed once for every command, a model's visit there,
and what the CPU can multiply natively."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


# CPU features with bfloat16 dot products in hardware: x86's AVX512-BF16 and AMX-BF16, ARM's BF16
# extension. Without one, bfloat16 products are emulated and no faster than float32.
BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (BF16_FEATURES)."""
    return any(cpu_has(name) for name in BF16_FEATURES)


def cpu_has(feature: str) -> bool:
    """Whether this CPU has `feature` ("amx_bf16", "avx512_bf16", ARM's "bf16"...). Asks torch
    where it can tell (torch.cpu.get_capabilities, torch >= 2.13), else reads /proc/cpuinfo's
    flags (x86) or Features (ARM); False when neither answers."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return capabilities().get(feature) is True
    return feature in cpu_flags()


def cpu_flags() -> list[str]:
    """/proc/cpuinfo's flags (x86) or Features (ARM) of the first CPU; [] where it cannot be read."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return value.split()
    return []

"""Library versions and hardware, recorded in reports so results can be reproduced."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

import prunellm

_DISTRIBUTIONS = ("torch", "transformers", "numpy", "gguf")


def package_version() -> str:
    """prunellm's version as installed (the wheel's metadata), else the source tree's own
    (`PYTHONPATH=src` with no install)."""
    try:
        return metadata.version("prunellm")
    except metadata.PackageNotFoundError:
        return prunellm.__version__


def library_versions() -> dict[str, str]:
    """Versions of python, prunellm and the libraries that shape results; the GPU when there is one."""
    versions = {"python": platform.python_version(), "prunellm": package_version()}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # gguf is optional for non-GGUF users
            continue
    # The vector width torch's CPU kernels were dispatched to: float sums can differ in their
    # last bits between AVX2 and AVX-512 kernels, and a highly sparse model amplifies such
    # differences (bench/README.md), so a CPU figure names its kind of host.
    versions["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        versions["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())
        versions["cuda"] = str(torch.version.cuda)
    return versions

"""The dtype of the calibration forwards: "auto" follows the CPU, a name pins it.

The forwards (the block calls that make the activations the statistics are taken on) are most
of a CPU prune, and a CPU with bfloat16 dot products in hardware runs them much faster in
bfloat16 (torch.autocast) at a perplexity within the seed spread (bench/README.md). Weights,
Hessians and solves keep the model's dtype whatever the forward dtype.
"""

from __future__ import annotations

import torch

from ..devices import cpu_multiplies_bf16
from ..errors import PrunellmError

FORWARD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# "auto": see resolve_forward_dtype. None (the recipes of older versions): the model's own dtype.
FORWARD_CHOICES = ("auto", *FORWARD_DTYPES)


def resolve_forward_dtype(name: str | None, device: torch.device, model_dtype: torch.dtype | None) -> str:
    """The dtype name a walk's forwards run in. "auto": bfloat16 on a CPU that multiplies it
    natively (devices.cpu_multiplies_bf16), else the model's own dtype (float32 on other CPUs;
    on CUDA what the model loaded in, as before "auto" existed). None: the model's own dtype.
    model_dtype None (not loaded yet): "auto" stays "auto" where the answer depends on it."""
    if name in FORWARD_DTYPES:
        return name
    if name not in (None, "auto"):
        raise PrunellmError(f"forward dtype must be one of {', '.join(FORWARD_CHOICES)}, got {name!r}")
    if name == "auto" and device.type == "cpu" and cpu_multiplies_bf16():
        return "bfloat16"
    if model_dtype is None:
        return "auto"
    names = {dtype: key for key, dtype in FORWARD_DTYPES.items()}
    if model_dtype not in names:
        raise PrunellmError(f"the model computes in {model_dtype}: give --forward-dtype (one of "
                            f"{', '.join(FORWARD_DTYPES)})")
    return names[model_dtype]


def autocast_dtype(name: str, device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """What torch.autocast runs the forwards in for the resolved `name`; None: no autocast (the
    model's own dtype). Refuses what torch cannot autocast to, or would crawl at."""
    dtype = FORWARD_DTYPES[name]
    if dtype == model_dtype:
        return None
    if dtype == torch.float32:
        # autocast only lowers precision: float32 forwards need float32 weights
        raise PrunellmError(f"--forward-dtype float32 needs a float32 model (--dtype float32); this one is "
                            f"{str(model_dtype).removeprefix('torch.')}")
    if dtype == torch.float16 and device.type == "cpu":
        # torch has no fast float16 matrix kernels for CPUs: such a walk would crawl
        raise PrunellmError("--forward-dtype float16 is far slower than float32 on a CPU; use bfloat16")
    return dtype

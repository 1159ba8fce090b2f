"""The dtype a model's source stores its weights in, and the one a result is saved in.

On CPU prunellm computes in float32 (half-precision products are many times slower there),
so a bfloat16 or float16 checkpoint comes out of a prune in float32, twice its size, unless
the result is written back in the source's own dtype. That is the default (`--save-dtype
auto`) for sparse results: their zeros are exact in any dtype, and the surviving weights
round once, as the source's weights did. Quantized results stay in the dtype they were
computed in: a value of a 4-bit grid (a float32 scale times an integer) is not a bfloat16
number, and a rounded one is no longer on the grid the export needs (--format compressed
stores such layers as integers and scales instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.io.source import resolve_source

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
CONFIG_FILE = "config.json"


def stored_dtype(source: str | Path) -> torch.dtype:
    """The floating dtype `source` (a model argument as `load_model` takes it) stores weights in:
    its config's `dtype` (or the older `torch_dtype`), else its first safetensors tensor's,
    else float32. A GGUF file counts as float32: that is what its blocks dequantize to."""
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        return torch.float32
    if resolved.kind == "hub":
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolved.location).to_dict()
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()
            raise PrunellmError(f"cannot load the config of '{resolved.location}': "
                                f"{reason[0] if reason else type(error).__name__}") from None
        return declared_dtype(config) or torch.float32
    directory = Path(resolved.location)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = {}
    return declared_dtype(config) or _checkpoint_dtype(directory) or torch.float32


def declared_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The floating dtype a config dictionary names, if any."""
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        if isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
    return None


def first_tensor_dtype(tensors: Iterable[Any]) -> torch.dtype | None:
    """The dtype of the first floating tensor among safetensors headers (`io.lazy.TensorInfo`)."""
    return next((SAFETENSORS_DTYPES[t.dtype] for t in tensors if t.dtype in SAFETENSORS_DTYPES), None)


def _checkpoint_dtype(directory: Path) -> torch.dtype | None:
    from prunellm.io.lazy import LazyCheckpoint

    try:
        return first_tensor_dtype(LazyCheckpoint(directory).tensors.values())
    except PrunellmError:  # no safetensors (a pickled checkpoint)
        return None


def hf_save_dtype(choice: str, *, stored: torch.dtype, compute: torch.dtype | str, quantizes: bool) -> torch.dtype:
    """The dtype a Hugging Face directory is written in, for `--save-dtype choice`.

    auto: the source's `stored` dtype for a sparse (or untouched) result; the `compute` dtype
    ("auto": the stored one, as `io.load.resolve_dtype` returns it off CPU) for a quantized one.
    An explicit dtype that cannot hold a quantized result's values exactly (anything but
    `compute` itself or float32) is refused, before any work.
    """
    compute = stored if compute == "auto" else compute
    if choice != "auto" and choice not in DTYPES:
        raise PrunellmError(f"unknown save dtype '{choice}': choose auto, {', '.join(DTYPES)}")
    if not quantizes:
        return stored if choice == "auto" else DTYPES[choice]
    if choice == "auto":
        return compute
    wanted = DTYPES[choice]
    if wanted not in (compute, torch.float32):
        exact = " or ".join(dict.fromkeys([dtype_name(compute), "float32"]))
        raise PrunellmError(f"--save-dtype {choice} would move the quantized weights off their grid (computed in "
                            f"{dtype_name(compute)}): save in {exact}, or use --format compressed (integers and "
                            "scales)")
    return wanted


def method_quantizes(described: dict[str, Any]) -> bool:
    """Whether a method (its `describe()` entry) puts weights on a quantization grid."""
    bits = described.get("bits")
    return described.get("gguf") is not None or (isinstance(bits, int) and bits < 16)


def round_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Round every floating parameter to `dtype` and back, in place: the model then computes
    with exactly the values a save in `dtype` writes (an evaluation after this scores the
    saved file). A value `dtype` cannot hold (beyond float16's 65504) is an error."""
    for param, rounded in _rounded_parameters(model, dtype):
        param.data.copy_(rounded)


def cast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Convert every floating parameter to `dtype`, in place, one tensor at a time (a model's
    `.to` would cast its rotary and other computed buffers too); overflow is an error."""
    for param, rounded in _rounded_parameters(model, dtype):
        param.data = rounded


def _rounded_parameters(model: nn.Module, dtype: torch.dtype) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
    for name, param in model.named_parameters():  # a tied parameter comes once
        if param.is_floating_point() and param.dtype != dtype and not param.is_meta:
            yield param, cast_checked(name, param.detach(), dtype)


def cast_checked(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A floating `tensor` in `dtype` (others as they are); a value it cannot hold is an error."""
    if not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    cast = tensor.to(dtype)
    check_representable(name, cast, dtype)
    return cast


def check_representable(name: str, rounded: torch.Tensor, dtype: torch.dtype) -> None:
    """Fail on a tensor that overflowed when cast to `dtype` (the source was finite)."""
    from prunellm.solvers.hessian import all_finite

    if not all_finite(rounded):
        raise PrunellmError(f"{name} has values beyond {dtype_name(dtype)}'s range (max "
                            f"{torch.finfo(dtype).max:g}): save in bfloat16 or float32 (--save-dtype)")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

"""Quantization scheme presets under the names llm-compressor, vLLM and compressed-tensors use
(`--scheme W4A16`), as shorthands for the explicit options.

The grids are compressed-tensors 0.20's PRESET_SCHEMES (quantization/quant_scheme.py), weights
only: W4A16 and W8A16 are symmetric integer weights in groups of 128 inputs, W4A16_ASYM the
same with zero points. GPTQ's activation order comes with them, as llm-compressor's GPTQ
applies it by default ("static": columns in order of the Hessian diagonal, groups kept as
contiguous runs of inputs, which is what prunellm's act_order does with groups). A method
without activation order (SparseGPT's joint sweep, which prunes in column order) takes the
grid alone.

Options the user gives explicitly win over the preset's (`--scheme W4A16 --group-size 64`).
Without a scheme, the recommended defaults (methods/recommended.py) give a 4- or 8-bit run
whose user set no grid option W4A16's or W8A16's grid, with its group fitted to the model;
`--defaults paper` keeps the options' own defaults: the papers' grid, per row and asymmetric.
"""

from __future__ import annotations

from typing import Any

from ..errors import PrunellmError

SCHEMES: dict[str, dict[str, Any]] = {
    "W4A16": {"bits": 4, "group_size": 128, "sym": True, "act_order": True},
    "W4A16_ASYM": {"bits": 4, "group_size": 128, "sym": False, "act_order": True},
    "W8A16": {"bits": 8, "group_size": 128, "sym": True, "act_order": True},
}


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


def with_scheme(scheme: str | None, options: dict[str, Any], takes: set[str]) -> dict[str, Any]:
    """`options` with the preset's values for the options the user left unset. takes: the
    options the method accepts (a preset's act_order is dropped for a method without it)."""
    if scheme is None:
        return options
    preset = SCHEMES.get(scheme.upper())
    if preset is None:
        raise PrunellmError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if "bits" not in takes:
        raise PrunellmError(f"--scheme {scheme} quantizes, and this method does not take bits")
    if options.get("gguf") is not None:
        raise PrunellmError(f"--scheme {scheme} and a GGUF type both choose the grid: give one of them")
    return {**{name: value for name, value in preset.items() if name in takes}, **options}

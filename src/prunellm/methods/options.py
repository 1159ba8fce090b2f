"""Method options: dataclass fields that carry their command-line help, and the texts of the
knobs several methods share (one wording each, the CLI's)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Knobs several option groups share: one help text each.
SPARSITY = "fraction of weights to zero (default 0.5)"
NM = "n:m pattern, e.g. 2:4 (n zeros in every m inputs)"
BITS = "quantize to 2-8 bits (GPTQ grid)"
GROUP_SIZE = "inputs per quantization scale (default: per row; 4 and 8 bits: see --defaults)"
SYM = "symmetric quantization grid"
ACT_ORDER = "GPTQ: quantize columns by decreasing Hessian diagonal (default on)"
BLOCK_SIZE = "columns per lazy-update block (default 128)"
DAMP_FRAC = "Hessian damping, fraction of mean diagonal"
HESSIAN_SHRINK = ("GPTQ: quantize with (1-a)*H + a*diag(H), a in [0, 1] (recommended default of --method gptq: "
                  "0.5; as published: 0), or 'auto': a chosen per layer on held-out calibration windows")
GGUF = "quantize onto a GGUF block type: q4_0, q4_1, q5_0, q5_1, q8_0, q3_k, q4_k, q5_k, q6_k, q3_k_m, q4_k_m, q5_k_m"


def option(default: Any, help: str, *, type: type | None = None, choices: tuple[str, ...] | None = None,
           flag: bool = True) -> Any:
    """A method option: a dataclass field whose metadata the command line builds its flag from.

    type: what a command-line value converts to, where the annotation is not one scalar type
    (nm: "2:4", a str). choices: the values allowed. flag False: no command-line flag of its own
    (gguf comes from --gguf-type; GPTQ's keep_zeros and refit_scales are for the Python API)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "choices": choices, "flag": flag})


def shrink_setting(text: str) -> float | str:
    """--hessian-shrink's value: 'auto' or a number (the solver checks its range)."""
    return "auto" if text.strip().lower() == "auto" else float(text)


def solver_config(options: Any, config_class: type) -> Any:
    """The solver's config from an option group that mirrors its fields (validated by the solver's
    own checks, so a method refuses exactly what its solver refuses)."""
    return config_class(**{f.name: getattr(options, f.name) for f in dataclasses.fields(config_class)})

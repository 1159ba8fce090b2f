"""The grid of a sweep: every method at every sparsity (or n:m pattern), optionally quantized.

Everything here is checked before any model is loaded, so a typo costs one line, not an hour.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import PrunellmError
from ..methods import Method
from ..solvers.checks import parse_nm

DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt")
DEFAULT_SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the SparseGPT paper's Figure 1 range


@dataclass(frozen=True)
class SweepSetting:
    """One point of the grid: a method with either an unstructured `sparsity` or an `nm`
    pattern ("2:4"), and optionally `bits` (GPTQ grid; None = no quantization)."""

    method: str
    sparsity: float | None = None
    nm: str | None = None
    bits: int | None = None
    group_size: int | None = None

    @property
    def target_sparsity(self) -> float:
        if self.nm is not None:
            n, m = parse_nm(self.nm)
            return n / m
        return float(self.sparsity or 0.0)

    @property
    def pattern(self) -> str:
        """'50%' or '2:4': how the paper tables name a column."""
        return self.nm if self.nm is not None else f"{self.target_sparsity * 100:g}%"

    @property
    def key(self) -> str:
        """Unique, file-name safe: sparsegpt_50, wanda_2-4, magnitude_60_w4g128."""
        pattern = self.nm.replace(":", "-") if self.nm is not None else f"{self.target_sparsity * 100:g}"
        groups = "" if self.group_size is None else f"g{self.group_size}"
        quant = "" if self.bits is None else f"_w{self.bits}{groups}"
        return f"{self.method}_{pattern}{quant}"

    @property
    def label(self) -> str:
        groups = "" if self.group_size is None else f" g{self.group_size}"
        quant = "" if self.bits is None else f" {self.bits}-bit{groups}"
        return f"{self.method} {self.pattern}{quant}"

    @property
    def series(self) -> str:
        """The line a plot draws this setting on: one per method and quantization."""
        return self.method + ("" if self.bits is None else f" {self.bits}-bit")

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"nm": self.nm} if self.nm is not None else {"sparsity": self.sparsity}
        if self.bits is not None:
            options["bits"] = self.bits
            if self.group_size is not None:
                options["group_size"] = self.group_size
        return options

    def build(self, defaults: str = "recommended", layer_inputs: dict[str, int] | None = None) -> Method:
        """The method of this setting, with `defaults` applied as `prunellm prune` applies them.
        layer_inputs: the model's layers (`compression.layer_inputs`), which the recommended
        grid's group size fits."""
        from ..pipeline import resolve_method

        return resolve_method(self.method, self.options(), defaults=defaults, layer_inputs=layer_inputs)[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key, "label": self.label, "series": self.series,
                "target_sparsity": self.target_sparsity}


def parse_sparsities(text: str) -> tuple[float, ...]:
    """'0.3,0.5' -> (0.3, 0.5); every value strictly between 0 and 1."""
    values = []
    for part in _items(text):
        try:
            value = float(part)
        except ValueError:
            raise PrunellmError(f"sparsity {part!r} is not a number") from None
        if not (0.0 < value < 1.0) or math.isnan(value):
            raise PrunellmError(f"sparsity must be in (0, 1), got {part}")
        values.append(value)
    return tuple(values)


def parse_patterns(text: str) -> tuple[str, ...]:
    """'2:4,4:8' -> ('2:4', '4:8'), each checked (0 < n < m)."""
    patterns = []
    for part in _items(text):
        n, m = parse_nm(part)
        patterns.append(f"{n}:{m}")
    return tuple(patterns)


def parse_bits(text: str) -> tuple[int | None, ...]:
    """'4' or 'none,4,3' -> (None, 4, 3): each setting once per entry; none = not quantized."""
    values: list[int | None] = []
    for part in _items(text):
        if part.lower() in ("none", "16"):
            values.append(None)
            continue
        if not part.isdigit() or not 2 <= int(part) <= 8:
            raise PrunellmError(f"bits must be between 2 and 8 (or none), got {part!r}")
        values.append(int(part))
    return tuple(values)


def build_settings(methods: tuple[str, ...] = DEFAULT_METHODS, sparsities: tuple[float, ...] = (),
                   patterns: tuple[str, ...] = (), bits: tuple[int | None, ...] = (None,),
                   group_size: int | None = None) -> list[SweepSetting]:
    """methods x (sparsities + patterns) x bits, in that order, each method built once to
    refuse what it does not take (gptq has no sparsity, unknown names, bad options)."""
    if not methods:
        raise PrunellmError("no methods given")
    if not sparsities and not patterns:
        raise PrunellmError("no sparsities or n:m patterns given")
    if group_size is not None and all(b is None for b in bits):
        raise PrunellmError("--group-size needs --bits")
    settings: list[SweepSetting] = []
    for method in methods:
        for width in bits or (None,):
            groups = group_size if width is not None else None  # an unquantized setting has no groups
            grid = [SweepSetting(method, sparsity=s, bits=width, group_size=groups) for s in sparsities]
            grid += [SweepSetting(method, nm=p, bits=width, group_size=groups) for p in patterns]
            for setting in grid:
                setting.build()  # raises PrunellmError on what the method refuses
                if setting not in settings:
                    settings.append(setting)
    keys = [s.key for s in settings]
    if len(set(keys)) != len(keys):  # e.g. 0.5 and 0.50000001 round to one name
        raise PrunellmError("two settings have the same name: use sparsities that differ by at least 0.01%")
    return settings


def parse_grid(methods: str, sparsities: str | None = None, patterns: str | None = None, bits: str | None = None,
               group_size: int | None = None) -> list[SweepSetting]:
    """The grid from command-line lists: '--sparsities' defaults to 0.3..0.8 unless only n:m
    patterns are asked for."""
    nm = parse_patterns(patterns) if patterns else ()
    values = parse_sparsities(sparsities) if sparsities else (() if nm else DEFAULT_SPARSITIES)
    return build_settings(tuple(_items(methods)), values, nm, parse_bits(bits) if bits else (None,), group_size)


def _items(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise PrunellmError(f"empty list: {text!r}")
    return items

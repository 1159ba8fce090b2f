"""How numbers read in a report: a few significant digits, percentages, a dash for missing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MISSING = "–"


def number(value: Any, digits: int = 4) -> str:
    """29.9123 -> '29.91', 12345.6 -> '1.235e+04', None/NaN -> '–', inf -> '∞'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def perplexity(value: Any) -> str:
    """Two decimals, as the papers print them: 29.91, 1534.20; a diverged model in scientific form."""
    if not finite(value):
        return number(value)
    return f"{value:.2f}" if value < 1e5 else f"{value:.3e}"


def percent(value: Any, digits: int = 1) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    return f"{100 * value:.{digits}f}%"


def accuracy(value: Any, stderr: Any = None) -> str:
    """0.75, 0.069 -> '0.750 ± 0.069'."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    if isinstance(stderr, (int, float)) and math.isfinite(stderr):
        return f"{value:.3f} ± {stderr:.3f}"
    return f"{value:.3f}"


def seconds(value: Any) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    if value < 10:
        return f"{value:.2f} s"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def plain(value: Any) -> str:
    """Settings values: lists joined, None as a dash, floats short."""
    if value is None:
        return MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) if value else MISSING
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_name(source: Any) -> str:
    """A model's name for a title: the last part of its path or hub id ('SmolLM2-135M')."""
    source = str(source or "model")
    return Path(source).name or source

"""Outputs for serving: prunellm's compressed format and compressed-tensors, from a prune just
run or from a directory a prune saved. What the CLI's --format and `export --to` call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .errors import PrunellmError
from .io.compressed.checkpoint import SizeSummary, is_compressed_dir, save_compressed
from .io.compressed.from_directory import export_compressed_lazily
from .io.lazy import INDEX_FILE, SINGLE_FILE, LazyCheckpoint
from .io.quant_grids_file import load_quant_grids
from .io.skeleton import build_skeleton
from .io.save import REPORT_FILE
from .methods import Method
from .solvers.checks import parse_nm
from .walker import WalkConfig, WalkResult, target_layers

SERVING_FORMATS = ("compressed", "compressed-tensors")


def method_nm(method: dict[str, Any] | Method | None) -> tuple[int, int] | None:
    """The n:m pattern a method pruned to (from the method or its report entry), if any."""
    if isinstance(method, Method):
        return getattr(method.config, "nm", None)
    nm = (method or {}).get("nm")
    return parse_nm(tuple(nm) if isinstance(nm, list) else nm)


def check_serving_output(method: Method, fmt: str) -> None:
    """Before pruning: refuse a format the method's result could not be written in."""
    if getattr(method.config, "gguf", None) is not None:
        raise PrunellmError(f"--format {fmt} holds min-max grids, not GGUF ones: use --format gguf with --gguf-type")
    if fmt == "compressed-tensors":
        from .io.compressed_tensors_export import check_compressed_tensors_method

        check_compressed_tensors_method(method.describe())


def write_serving(model: nn.Module, tokenizer: Any, result: WalkResult, method: Method, fmt: str, out: str | Path,
                  *, report: dict[str, Any], dtype: str = "auto", overwrite: bool = False) -> tuple[Path, str]:
    """The compressed model at `out` in `fmt`; returns the path and a line on what it saved."""
    names = [record.name for record in result.layers]
    if result.gguf_blocks:
        raise PrunellmError(f"--format {fmt} holds min-max grids, not GGUF ones: use --format gguf")
    if fmt == "compressed-tensors":
        from .io.compressed_tensors_export import save_compressed_tensors

        path = save_compressed_tensors(model, tokenizer, result.quant_grids, out, report=report, overwrite=overwrite)
        return path, "compressed-tensors pack-quantized"
    path, summary = save_compressed(model, tokenizer, out, names, grids=result.quant_grids, nm=method_nm(method),
                                    dtype=dtype, report=report, overwrite=overwrite)
    return path, summary.describe()


def export_directory(directory: str | Path, fmt: str, out: str | Path, *, dtype: str = "auto",
                     overwrite: bool = False) -> tuple[Path, str]:
    """Convert a directory written by `prunellm prune --out` to `fmt` at `out`."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise PrunellmError(f"not a directory: {directory}")
    if is_compressed_dir(directory):
        raise PrunellmError(f"{directory} is already in prunellm's compressed format: export the directory the "
                            "prune saved (--format hf)")
    if not any((directory / name).is_file() for name in (SINGLE_FILE, INDEX_FILE)):
        raise PrunellmError(f"{directory} has no safetensors weights ({SINGLE_FILE}): export reads a directory "
                            "written by `prunellm prune --out`")
    if fmt == "compressed-tensors":
        from .io.compressed_tensors_export import export_directory_to_compressed_tensors

        return export_directory_to_compressed_tensors(directory, out, overwrite), "compressed-tensors pack-quantized"
    if fmt != "compressed":
        raise PrunellmError(f"unknown format {fmt!r}: choose {', '.join(SERVING_FORMATS)}")
    report_path = directory / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    grids = load_quant_grids(directory)
    nm = method_nm(report.get("method") if report is not None else None)
    if report is not None:
        names = [layer["name"] for layer in report["layers"]]
    else:
        names = list(target_layers(build_skeleton(LazyCheckpoint(directory), "auto").model, WalkConfig()))
    path, summary = export_compressed_lazily(directory, out, names, grids=grids, nm=nm, dtype=dtype, report=report,
                                             overwrite=overwrite)
    return path, summary.describe()


__all__ = ["SERVING_FORMATS", "SizeSummary", "check_serving_output", "export_directory", "write_serving"]

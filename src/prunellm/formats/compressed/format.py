"""prunellm's compressed format (docs/format.md): safetensors of packed layers plus a JSON
manifest. This module is the format's face to the rest of prunellm: the checks, writing a run
or a saved directory, recognising a directory, and reading one back with dense layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunellm.errors import PrunellmError
from prunellm.io.grids import load_quant_grids
from prunellm.io.lazy import LazyCheckpoint
from prunellm.io.save import REPORT_FILE
from prunellm.io.skeleton import build_skeleton
from prunellm.solvers.checks import parse_nm
from prunellm.walker import WalkConfig, target_layers

from ..base import FinishedRun, OutputFormat, OutputSpec
from .checkpoint import is_compressed_dir, save_compressed, save_dtype
from .from_directory import export_compressed_lazily
from .model import load_expanded

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method


class CompressedFormat(OutputFormat):
    name = "compressed"
    summary = "prunellm's smaller format (packed sparse and quantized layers), run by `prunellm.load`"

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        output = super().check(output, method, source, compute_dtype)
        refuse_gguf(method, self.name)
        return output

    def stored_dtype(self, output: OutputSpec, model: PreTrainedModel, method: Method,
                     source: str | Path | None, compute_dtype: torch.dtype | str) -> torch.dtype | None:
        return save_dtype(model, output.save_dtype)

    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        if run.result.gguf_blocks:
            raise PrunellmError(f"--format {self.name} holds min-max grids, not GGUF ones: use --format gguf")
        names = [record.name for record in run.result.layers]
        path, summary = save_compressed(run.model, run.tokenizer, output.path, names, grids=run.result.quant_grids,
                                        nm=method_nm(run.method), dtype=output.save_dtype, report=run.report,
                                        overwrite=output.overwrite)
        return path, f"saved to {path}: {summary.describe()}"

    def export(self, directory: Path, output: OutputSpec) -> tuple[Path, str]:
        """One layer in memory at a time (a streamed prune's output exports on the same machine)."""
        check_exportable(directory)
        report_path = directory / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        nm = method_nm(report.get("method") if report is not None else None)
        if report is not None:
            names = [layer["name"] for layer in report["layers"]]
        else:
            names = list(target_layers(build_skeleton(LazyCheckpoint(directory), "auto").model, WalkConfig()))
        path, summary = export_compressed_lazily(directory, output.path, names, grids=load_quant_grids(directory),
                                                 nm=nm, dtype=output.save_dtype, report=report,
                                                 overwrite=output.overwrite)
        return path, f"saved to {path}: {summary.describe()}"

    def how_to_load(self, path: Path) -> str:
        return (f"load: prunellm.load('{path}') (a transformers model), `prunellm generate {path}`, `prunellm eval "
                f"{path}`: prunellm's own format, which transformers and vLLM do not read")

    def detect(self, path: Path) -> bool:
        return path.is_dir() and is_compressed_dir(path)

    def load(self, path: Path, *, dtype: torch.dtype | str = "auto",
             device: torch.device | str = "cpu") -> PreTrainedModel:
        model = load_expanded(path, device)
        return model if dtype == "auto" else model.to(dtype)


def refuse_gguf(method: Method, fmt: str) -> None:
    """GGUF grids are not min-max grids: only the gguf format holds them."""
    if getattr(method.config, "gguf", None) is not None:
        raise PrunellmError(f"--format {fmt} holds min-max grids, not GGUF ones: use --format gguf with --gguf-type")


def check_exportable(directory: Path) -> None:
    """A directory `export` can read: a saved prune, not already compressed."""
    from prunellm.io.lazy import INDEX_FILE, SINGLE_FILE

    if not directory.is_dir():
        raise PrunellmError(f"not a directory: {directory}")
    if is_compressed_dir(directory):
        raise PrunellmError(f"{directory} is already in prunellm's compressed format: export the directory the "
                            "prune saved (--format hf)")
    if not any((directory / name).is_file() for name in (SINGLE_FILE, INDEX_FILE)):
        raise PrunellmError(f"{directory} has no safetensors weights ({SINGLE_FILE}): export reads a directory "
                            "written by `prunellm prune --out`")


def method_nm(method: dict[str, Any] | Method | None) -> tuple[int, int] | None:
    """The n:m pattern a method pruned to (from the method or its report entry), if any."""
    if method is not None and not isinstance(method, dict):
        return getattr(method.config, "nm", None)
    nm = (method or {}).get("nm")
    return parse_nm(tuple(nm) if isinstance(nm, list) else nm)

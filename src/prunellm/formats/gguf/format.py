"""One .gguf file for llama.cpp (and Ollama, LM Studio): the source GGUF's metadata and
tokenizer, its untouched tensors, and the compressed layers packed onto the GGUF grids the
solver quantized them to (export.py), or rounded onto a type here for a float model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunellm.errors import PrunellmError
from prunellm.io.atomic import write_json_atomic
from prunellm.io.grids import load_gguf_blocks
from prunellm.io.save import REPORT_FILE
from prunellm.io.source import resolve_source
from prunellm.walker import WalkConfig, target_layers

from ..base import FinishedRun, OutputFormat, OutputSpec
from ..hf import HFFormat
from .export import FLOAT_TYPES, GGUFExportConfig, check_gguf_export, export_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method


class GGUFFormat(OutputFormat):
    name = "gguf"
    single_file = True
    takes_save_dtype = False
    takes_float_gguf_types = True
    summary = "one .gguf file for llama.cpp (needs a .gguf model)"

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        output = super().check(output, method, source, compute_dtype)
        if output.gguf_type is None:
            raise PrunellmError("--format gguf needs --gguf-type (q4_0, q8_0, q4_k_m, ... or f16 for no quantization)")
        output = dataclasses.replace(output, gguf_source=str(self.source_file(source)))
        if output.path is not None and not str(output.path).endswith(".gguf"):
            raise PrunellmError(f"--out must name a .gguf file with --format gguf, got {output.path}")
        config = _config(output)
        if config.type not in FLOAT_TYPES and getattr(method.config, "gguf", None) is None:
            raise PrunellmError(f"method {method.name!r} cannot quantize onto {config.type}")
        return output

    def check_model(self, output: OutputSpec, model: PreTrainedModel, method: Method, walk: WalkConfig) -> None:
        check_gguf_export(model, list(target_layers(model, walk)), output.gguf_source, _config(output))

    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        """The compressed model as one GGUF file, its report beside it (PATH.report.json)."""
        layers = {record.name: run.result.gguf_blocks.get(record.name) for record in run.result.layers}
        path = export_gguf(run.model, layers, output.gguf_source, output.path, _config(output),
                           _metadata(run.method.describe()))
        write_json_atomic(f"{path}.report.json", run.report)
        return path, f"saved to {path} (report: {path}.report.json)"

    def export(self, directory: Path, output: OutputSpec) -> tuple[Path, str]:
        """A directory written by `prunellm prune --out` as a GGUF file.

        Layers the prune left on a GGUF grid of this type are packed exactly; others (a pruned
        float model) are rounded onto the type here. The metadata and untouched tensors come
        from the GGUF the model was loaded from (named in report.json, or output.gguf_source).
        """
        from prunellm.io import load_model

        if output.gguf_type is None:
            raise PrunellmError("--to gguf needs --type (q4_0, q8_0, q4_k_m, ... or f16 for no quantization)")
        if not str(output.path).endswith(".gguf"):
            raise PrunellmError(f"--out must name a .gguf file, got {output.path}")
        if not directory.is_dir():
            raise PrunellmError(f"not a directory: {directory}")
        config = _config(output)
        report_path = directory / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        source = output.gguf_source
        if source is None and report is not None:
            source = report.get("model", {}).get("gguf_file")
        if source is None:
            raise PrunellmError(f"{directory} does not say which GGUF file its model came from: pass --source FILE.gguf")
        model, _ = load_model(directory)
        names = [layer["name"] for layer in report["layers"]] if report is not None else list(
            target_layers(model, WalkConfig()))
        check_gguf_export(model, names, source, config)
        blocks = load_gguf_blocks(directory)
        method = report.get("method", {}) if report is not None else {}
        path = export_gguf(model, {name: blocks.get(name) for name in names}, source, output.path, config,
                           _metadata(method))
        return path, f"saved to {path}"

    def default_export_path(self, directory: Path, output: OutputSpec) -> str:
        return f"{str(directory).rstrip('/')}-{(output.gguf_type or '').lower()}.gguf"

    def how_to_load(self, path: Path) -> str:
        return (f"load: `llama-cli -m {path}` (llama.cpp; Ollama, LM Studio), prunellm.load('{path}'), "
                f"`prunellm eval {path}`")

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".gguf"

    # A .gguf source loads as the Hugging Face loader reads it (transformers dequantizes it).
    load = HFFormat.load
    load_with_tokenizer = HFFormat.load_with_tokenizer

    @staticmethod
    def source_file(source: str | Path | None) -> Path:
        """The .gguf a run reads its metadata and tokenizer from: the model argument itself."""
        from prunellm.io import default_model_path

        resolved = resolve_source(default_model_path() if source is None else source)
        if resolved.kind != "gguf":
            raise PrunellmError("--format gguf needs a .gguf model: its metadata and tokenizer are reused "
                                "(for a Hugging Face model, use llama.cpp's convert_hf_to_gguf.py first)")
        return Path(resolved.location)


def _config(output: OutputSpec) -> GGUFExportConfig:
    return GGUFExportConfig(output.gguf_type, output.gguf_other_type)


def _metadata(method: dict[str, Any]) -> dict[str, str]:
    return {"general.quantized_by": "prunellm", "prunellm.method": json.dumps(method)}

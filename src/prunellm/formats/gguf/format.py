"""One .gguf file for llama.cpp (and Ollama, LM Studio), with the compressed layers packed onto
the GGUF grids the solver quantized them to, or rounded onto a type here for a float model.

The single entry for GGUF output; it decides by the model the run loaded:
- a .gguf source: its metadata, tokenizer and untouched tensors are reused (export.py);
- a Hugging Face model (directory or hub id): the whole file is written from the model, its
  config and its tokenizer (hf_writer.py), one tensor at a time.
"""

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
from .hf_writer import check_hf_gguf_export, export_hf_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method


class GGUFFormat(OutputFormat):
    name = "gguf"
    single_file = True
    takes_save_dtype = False
    takes_float_gguf_types = True
    streams = True  # into a directory beside the file, converted tensor by tensor (finish_streamed)
    summary = "one .gguf file for llama.cpp (from a .gguf or a Llama, Qwen2 or Gemma-3 Hugging Face model)"

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        output = super().check(output, method, source, compute_dtype)
        if output.gguf_type is None:
            raise PrunellmError("--format gguf needs --gguf-type (q4_0, q8_0, q4_k_m, ... or f16 for no quantization)")
        output = dataclasses.replace(output, gguf_source=_gguf_source(source))
        if output.path is not None and not str(output.path).endswith(".gguf"):
            raise PrunellmError(f"--out must name a .gguf file with --format gguf, got {output.path}")
        config = _config(output)
        if config.type not in FLOAT_TYPES and getattr(method.config, "gguf", None) is None:
            raise PrunellmError(f"method {method.name!r} cannot quantize onto {config.type}")
        return output

    def check_model(self, output: OutputSpec, model: PreTrainedModel, method: Method, walk: WalkConfig) -> None:
        names = list(target_layers(model, walk))
        if output.gguf_source is None:
            check_hf_gguf_export(model, None, names, _config(output))
        else:
            check_gguf_export(model, names, output.gguf_source, _config(output))

    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        """The compressed model as one GGUF file, its report beside it (PATH.report.json)."""
        layers = {record.name: run.result.gguf_blocks.get(record.name) for record in run.result.layers}
        if output.gguf_source is None:
            path = export_hf_gguf(run.model, run.tokenizer, layers, output.path, _config(output),
                                  _metadata(run.method.describe()))
        else:
            path = export_gguf(run.model, layers, output.gguf_source, output.path, _config(output),
                               _metadata(run.method.describe()))
        write_json_atomic(f"{path}.report.json", run.report)
        return path, f"saved to {path} (report: {path}.report.json)"

    def export(self, directory: Path, output: OutputSpec) -> tuple[Path, str]:
        """A directory written by `prunellm prune --out` as a GGUF file.

        Layers the prune left on a GGUF grid of this type are packed exactly; others (a pruned
        float model) are rounded onto the type here. The metadata and untouched tensors come
        from the GGUF the model was loaded from (named in report.json, or output.gguf_source);
        a model that came from Hugging Face is written whole from the directory, read one
        tensor at a time.
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
        method = report.get("method", {}) if report is not None else {}
        if source is None:
            names = [layer["name"] for layer in report["layers"]] if report is not None else None
            return _export_hf_directory(directory, names, output, config, _metadata(method))
        model, _ = load_model(directory)
        names = [layer["name"] for layer in report["layers"]] if report is not None else list(
            target_layers(model, WalkConfig()))
        check_gguf_export(model, names, source, config)
        blocks = load_gguf_blocks(directory)
        path = export_gguf(model, {name: blocks.get(name) for name in names}, source, output.path, config,
                           _metadata(method))
        return path, f"saved to {path}"

    def finish_streamed(self, directory: Path, output: OutputSpec, report: dict[str, Any]) -> tuple[Path, str]:
        """The streamed directory as the .gguf (read tensor by tensor), its report beside it; the
        directory is removed once the file is whole (kept on failure: a rerun resumes from it)."""
        import shutil

        if output.gguf_source is not None:
            raise PrunellmError("--stream reads a safetensors directory; GGUF output from a .gguf model "
                                "needs no --stream")
        path, _ = self.export(directory, output)
        write_json_atomic(f"{path}.report.json", report)
        shutil.rmtree(directory)
        return path, f"saved to {path} (report: {path}.report.json)"

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


def _gguf_source(source: str | Path | None) -> str | None:
    """The .gguf a run reuses the metadata and tokenizer of (the model argument itself), or None
    for a Hugging Face model, after refusing one whose architecture or tokenizer cannot be
    written (before any loading of weights)."""
    from prunellm.io import default_model_path, load_tokenizer

    from .arch import arch_for
    from .tokenizer import gguf_vocab

    resolved = resolve_source(default_model_path() if source is None else source)
    if resolved.kind == "gguf":
        return str(Path(resolved.location))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(resolved.location))
    except (OSError, ValueError) as error:
        raise PrunellmError(f"cannot read the config of {resolved.location}: {str(error).splitlines()[0]}") from None
    arch_for(config).hparams(config)
    gguf_vocab(load_tokenizer(str(resolved.location)))
    return None


def _export_hf_directory(directory: Path, names: list[str] | None, output: OutputSpec, config: GGUFExportConfig,
                         metadata: dict[str, str]) -> tuple[Path, str]:
    """A saved (or streamed) run of a Hugging Face model as a GGUF file, reading its safetensors
    one tensor at a time over a model skeleton on the meta device: memory stays about one tensor."""
    from prunellm.io import load_tokenizer
    from prunellm.io.lazy import LazyCheckpoint
    from prunellm.io.skeleton import build_skeleton

    if not (directory / "config.json").is_file():
        raise PrunellmError(f"{directory} holds no Hugging Face model (config.json) and does not say which GGUF file "
                            "its model came from: pass --source FILE.gguf")
    skeleton = build_skeleton(LazyCheckpoint(directory), "auto")
    model = skeleton.model
    stored = {name: key for key, name in skeleton.model_name.items()}
    if names is None:
        names = list(target_layers(model, WalkConfig()))
    tokenizer = load_tokenizer(directory)
    check_hf_gguf_export(model, tokenizer, names, config)
    blocks = load_gguf_blocks(directory)
    path = export_hf_gguf(model, tokenizer, {name: blocks.get(name) for name in names}, output.path, config, metadata,
                          fetch=lambda name: skeleton.checkpoint.read([stored[name]])[stored[name]])
    return path, f"saved to {path}"


def _config(output: OutputSpec) -> GGUFExportConfig:
    return GGUFExportConfig(output.gguf_type, output.gguf_other_type)


def _metadata(method: dict[str, Any]) -> dict[str, str]:
    return {"general.quantized_by": "prunellm", "prunellm.method": json.dumps(method)}

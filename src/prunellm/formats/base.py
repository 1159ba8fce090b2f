"""What every output format offers: one small interface, so that nobody else branches on one.

A format is asked, in the order of a run:
1. `check(output, method, source, compute_dtype)`: before any loading, refuse settings it cannot
   write (a GGUF type without a GGUF source, a sparse method for compressed-tensors, ...) and
   return them resolved (GGUF: the source file it reuses);
2. `check_model(output, model, method, walk)`: once the model is loaded, before compressing,
   refuse layers it cannot hold;
3. `stored_dtype(output, model, method, source, compute_dtype)`: the dtype it will store dense and sparse
   weights in, so that the run rounds them before evaluating (the report then scores the file);
4. `write(output, run)`: the finished run at `output.path`;
and, outside a run, `export(directory, output)` converts a directory a prune saved,
`detect(path)` says whether a path is in this format, `load(path, dtype, device)` reads one
back as a Hugging Face model with dense layers (what evaluation and pruning want; running a
compressed model without expanding it is `prunellm.load`, in runtime/).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from prunellm.errors import PrunellmError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method
    from prunellm.walker import WalkConfig, WalkResult

SAVE_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class OutputSpec:
    """Where and how a run's result is written. path None: nothing is written.

    format: a name from the formats table, or None: the run's default (formats/choice.py:
    compressed-tensors or prunellm's compressed format when it quantizes, else hf). save_dtype:
    dtype of stored weights (each format says what "auto" means). gguf_type and
    gguf_other_type: the GGUF types of compressed layers and of everything else."""

    format: str | None = None
    path: str | None = None
    overwrite: bool = False
    save_dtype: str = "auto"
    gguf_type: str | None = None
    gguf_other_type: str = "keep"
    gguf_source: str | None = None  # export: the .gguf a saved model came from (default: report.json's)


@dataclass
class FinishedRun:
    """A compressed model in memory and what a format needs to write it."""

    model: PreTrainedModel
    tokenizer: Any
    result: WalkResult
    method: Method
    report: dict[str, Any]
    source: str | Path | None  # the model argument the run loaded (a .gguf file for GGUF output)
    extra: dict[str, Any] = field(default_factory=dict)


class OutputFormat(ABC):
    """One output format. Subclasses set `name` and implement write, detect and load."""

    name: ClassVar[str]
    single_file: ClassVar[bool] = False  # one file (GGUF) rather than a directory
    takes_save_dtype: ClassVar[bool] = True  # --save-dtype chooses what it stores
    takes_float_gguf_types: ClassVar[bool] = False  # --gguf-type f16/bf16/f32 (unquantized GGUF tensors)
    streams: ClassVar[bool] = False  # a --stream run can write it (streamed_directory, finish_streamed)
    summary: ClassVar[str] = ""  # one line for --help

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        """Refuse, before any loading, settings this format cannot write; returns the settings
        with what the format resolved from the source filled in. compute_dtype: what the run
        computes in ("auto": the checkpoint's own)."""
        if output.save_dtype not in SAVE_DTYPES:
            raise PrunellmError(f"unknown --save-dtype {output.save_dtype!r}; choose one of {', '.join(SAVE_DTYPES)}")
        if output.save_dtype != "auto" and not self.takes_save_dtype:
            raise PrunellmError(f"--save-dtype only applies with --format hf or compressed, not --format {self.name}")
        if output.gguf_type is not None and not self.takes_float_gguf_types:
            from .gguf.export import FLOAT_TYPES

            if output.gguf_type.lower() in FLOAT_TYPES:
                raise PrunellmError(f"--gguf-type {output.gguf_type} only applies with --format gguf")
        return output

    def check_model(self, output: OutputSpec, model: PreTrainedModel, method: Method, walk: WalkConfig) -> None:
        """Refuse, once the model is loaded and before compressing, layers this format cannot hold."""

    def stored_dtype(self, output: OutputSpec, model: PreTrainedModel, method: Method,
                     source: str | Path | None, compute_dtype: torch.dtype | str) -> torch.dtype | None:
        """The dtype dense and sparse weights are written in when this format chooses it, else None."""
        return None

    @abstractmethod
    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        """Write the run at output.path; returns the path and the line that tells the user."""

    def export(self, directory: Path, output: OutputSpec) -> tuple[Path, str]:
        """Convert a directory written by `prunellm prune --out` (hf format) to this format;
        returns the path and the line that tells the user."""
        raise PrunellmError(f"prunellm cannot export to {self.name}")

    def how_to_load(self, path: Path) -> str:
        """One line for the user: what loads the output at `path`."""
        return f"load: `prunellm eval {path}`"

    def streamed_directory(self, output: OutputSpec) -> str:
        """Where a `--stream` run writes its sharded checkpoint: output.path for a directory
        format; a single-file format streams beside its file and converts in finish_streamed."""
        return str(output.path) if not self.single_file else f"{output.path}.stream"

    def finish_streamed(self, directory: Path, output: OutputSpec, report: dict[str, Any]) -> tuple[Path, str]:
        """Turn a streamed run's directory into this format's file (single-file formats)."""
        raise PrunellmError(f"--stream cannot write --format {self.name}")

    def default_export_path(self, directory: Path, output: OutputSpec) -> str:
        return f"{str(directory).rstrip('/')}-{self.name}"

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Whether `path` (a file or directory) is in this format."""

    @abstractmethod
    def load(self, path: Path, *, dtype: torch.dtype | str = "auto",
             device: torch.device | str = "cpu") -> PreTrainedModel:
        """The model at `path` with every layer dense."""

    def load_with_tokenizer(self, source: str | Path | None, *, dtype: str = "auto",
                            compute_device: torch.device | str | None = None) -> tuple[PreTrainedModel, Any]:
        """(model, tokenizer) for evaluation or pruning: weights on the CPU in `dtype` ("auto":
        float32 when computing on CPU, the stored one elsewhere; io.load.resolve_dtype), every
        layer dense and finite, in eval mode."""
        from prunellm.devices import resolve_device
        from prunellm.io import load_tokenizer
        from prunellm.io.checks import check_finite
        from prunellm.io.load import resolve_dtype

        cpu = resolve_device("cpu")
        compute = resolve_device(compute_device) if compute_device is not None else cpu
        model = self.load(Path(source).expanduser(), dtype=resolve_dtype(dtype, compute), device=cpu)
        model.eval()
        check_finite(model)
        return model, load_tokenizer(source)

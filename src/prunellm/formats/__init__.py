"""Output formats behind one interface (base.OutputFormat), and the one table of them.

| name               | module                  | holds                                          |
| ------------------ | ----------------------- | ---------------------------------------------- |
| hf                 | hf.py                   | a Hugging Face directory (safetensors)         |
| compressed         | compressed/             | prunellm's packed layouts (docs/format.md)     |
| compressed-tensors | compressed_tensors/     | vLLM's pack-quantized int4/int8                |
| gguf               | gguf/                   | one .gguf file for llama.cpp                   |

The CLI, `export`, `prunellm.load` and `eval` look a format up here instead of branching on
its name. A run that names none gets the one choice.py picks (a quantized run: a packed format). Adding a format = one module with an OutputFormat subclass plus a line in `_CLASSES`.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunellm.errors import PrunellmError

from .base import FinishedRun, OutputFormat, OutputSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# name -> "module:class", imported on first use (compressed-tensors and gguf pull heavy packages).
_CLASSES = {
    "hf": "prunellm.formats.hf:HFFormat",
    "compressed": "prunellm.formats.compressed.format:CompressedFormat",
    "compressed-tensors": "prunellm.formats.compressed_tensors.format:CompressedTensorsFormat",
    "gguf": "prunellm.formats.gguf.format:GGUFFormat",
}
# Detection order: the specific formats first; a plain Hugging Face directory last.
_DETECT_ORDER = ("compressed", "compressed-tensors", "gguf", "hf")


def format_names() -> tuple[str, ...]:
    return tuple(_CLASSES)


@cache
def get_format(name: str) -> OutputFormat:
    """The format registered as `name`."""
    if name not in _CLASSES:
        raise PrunellmError(f"unknown format {name!r}: choose one of {', '.join(_CLASSES)}")
    module, _, cls = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def detect_format(path: str | Path) -> OutputFormat | None:
    """The format of a local file or directory, or None (not local, or none of ours)."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    for name in _DETECT_ORDER:
        fmt = get_format(name)
        if fmt.detect(path):
            return fmt
    return None


def load_model(source: str | Path | None = None, *, dtype: str = "auto", compute_device: Any = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model for evaluation or pruning, with every layer dense, and its tokenizer, from any
    source: a directory in any format prunellm writes, a .gguf file, a hub id, or None (the
    bundled default model). dtype and compute_device as `prunellm.io.load_model` takes them."""
    fmt = (detect_format(source) if source is not None else None) or get_format("hf")
    return fmt.load_with_tokenizer(source, dtype=dtype, compute_device=compute_device)


__all__ = ["FinishedRun", "OutputFormat", "OutputSpec", "detect_format", "format_names", "get_format", "load_model"]

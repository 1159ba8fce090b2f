"""Which format a run writes when the user names none (`prunellm prune ... --out DIR` without
`--format`; `OutputSpec(format=None)` from Python).

A quantized result written as dense float weights is no smaller than its source, so a run that
quantizes writes a packed checkpoint unless asked otherwise:

| the run                                 | written as          | because                           |
| --------------------------------------- | ------------------- | --------------------------------- |
| does not quantize (pruning alone, noop) | hf                  | what every tool loads             |
| quantizes only, 4 or 8 bits             | compressed-tensors  | what vLLM and transformers load   |
| prunes and quantizes, other bits, or    | compressed          | the one format that holds them    |
|   quantizes with a --save-dtype         |                     |                                   |
| quantizes onto GGUF grids, --out *.gguf | gguf                | the file llama.cpp reads          |
| quantizes onto GGUF grids, --out DIR    | hf (+ its grids)    | `prunellm export DIR --to gguf`   |
| --stream (other than to a .gguf file)   | hf                  | a streamed run writes shards      |

Without the compressed-tensors package, the quantization-only row writes the compressed format
(the reason says so). Once the model is loaded, `fit_model` sends a default compressed-tensors
run whose layers that format cannot pack (GPT-2's Conv1D) to the compressed format, before any
compression; a format the user named is refused instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunellm.errors import PrunellmError

from .base import OutputSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method
    from prunellm.walker import WalkConfig

    from .base import OutputFormat

COMPRESSED_TENSORS_BITS = (4, 8)  # what vLLM's WNA16 kernels run (compressed_tensors/export.py)


@dataclass(frozen=True)
class FormatChoice:
    """The format a run writes and, when the user did not name it, why (a line for the user)."""

    name: str
    reason: str | None = None  # None: the user asked for it

    @property
    def by_default(self) -> bool:
        return self.reason is not None


def default_format(method: dict[str, Any], *, path: str | None = None, stream: bool = False,
                   save_dtype: str = "auto") -> FormatChoice:
    """The format for a run of `method` (its `Method.describe()`) when the user names none.
    path: the output path (a .gguf name asks for GGUF); stream: a streamed run; save_dtype: the
    dtype asked for stored values (compressed-tensors takes none)."""
    gguf, bits = method.get("gguf"), method.get("bits")
    quantizes = gguf is not None or (isinstance(bits, int) and bits < 16)
    if stream and not (gguf is not None and path is not None and str(path).endswith(".gguf")):
        hint = "; `prunellm export OUT --to compressed` packs it" if quantizes else ""
        return FormatChoice("hf", f"a streamed run writes safetensors shards{hint}")
    if not quantizes:
        return FormatChoice("hf", "nothing quantized: dense weights")
    if gguf is not None:
        if path is not None and str(path).endswith(".gguf"):
            return FormatChoice("gguf", f"quantized onto GGUF {gguf} grids, written to a .gguf file")
        return FormatChoice("hf", f"GGUF grids ({gguf}) kept beside dense weights: `prunellm export DIR --to gguf "
                                  f"--type {gguf}` writes the .gguf (or name --out FILE.gguf)")
    prunes = method.get("nm") is not None or float(method.get("sparsity") or 0) > 0
    if prunes:
        return FormatChoice("compressed", "sparse and quantized: prunellm's compressed format holds both")
    if bits not in COMPRESSED_TENSORS_BITS:
        return FormatChoice("compressed", f"{bits}-bit: compressed-tensors (vLLM) takes 4 or 8 bits only")
    if save_dtype != "auto":
        return FormatChoice("compressed", f"--save-dtype {save_dtype}: compressed-tensors stores the compute dtype, "
                                          "prunellm's compressed format the one asked for")
    if importlib.util.find_spec("compressed_tensors") is None:
        return FormatChoice("compressed", "quantized only, but the compressed-tensors package is missing "
                                          "(pip install 'prunellm[deploy]' for vLLM's format)")
    return FormatChoice("compressed-tensors", "quantized only: the format vLLM and transformers load")


def resolve_output(output: OutputSpec, method: Method, *, stream: bool = False) -> tuple[OutputSpec, FormatChoice]:
    """`output` with its format filled in when the user named none, and the choice made."""
    if output.format is not None:
        return output, FormatChoice(output.format)
    choice = default_format(method.describe(), path=output.path, stream=stream, save_dtype=output.save_dtype)
    return dataclasses.replace(output, format=choice.name), choice


def fit_model(fmt: OutputFormat, choice: FormatChoice, output: OutputSpec, model: PreTrainedModel, method: Method,
              walk: WalkConfig) -> tuple[OutputFormat, OutputSpec, FormatChoice]:
    """The format's check of the loaded model (`check_model`); a format chosen by default that
    cannot hold this model's layers gives way to prunellm's compressed format, which holds every
    layer kind, before any compression. A format the user named is never replaced."""
    from . import get_format

    try:
        fmt.check_model(output, model, method, walk)
        return fmt, output, choice
    except PrunellmError as error:
        if not choice.by_default or fmt.name != "compressed-tensors":
            raise
        fallback = get_format("compressed")
        output = dataclasses.replace(output, format=fallback.name)
        fallback.check_model(output, model, method, walk)
        return fallback, output, FormatChoice(fallback.name, f"compressed-tensors cannot hold this model ({error})")

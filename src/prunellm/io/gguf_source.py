"""What loading a GGUF checkpoint with transformers needs beyond a plain `from_pretrained`."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prunellm.errors import PrunellmError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def gguf_model_kwargs(file_name: str) -> dict[str, Any]:
    """Keyword arguments for `AutoModelForCausalLM.from_pretrained(parent_dir, **kwargs)` on a GGUF file.

    Recent transformers keep some architectures' weights packed in GGUF blocks when a
    matmul kernel is available (a GPU with `kernels` installed). Pruning and GPTQ need
    dense float weights, so ask for dequantization explicitly where that option exists.
    Not for the tokenizer: it would store the config in tokenizer_config.json and fail to save.
    """
    kwargs: dict[str, Any] = {"gguf_file": file_name}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF weights
        return kwargs
    kwargs["quantization_config"] = GgufConfig(gguf_file=file_name, dequantize=True)
    return kwargs


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Within it, transformers parses a GGUF file's metadata once and builds gguf's tensor-name
    map once per architecture.

    Loading a GGUF model and its tokenizer, transformers opens the file three times (the config,
    the weights, the tokenizer), and gguf's reader walks every vocabulary string in Python each
    time (seconds for SmolLM2's 49k tokens); it also builds the tensor-name map anew for every
    module of the model (hundreds of times). Both are read-only once built, so one per file (and
    per architecture) serves every call. transformers imports both names from `gguf` inside its
    functions, so they are swapped there for the context's duration and restored after; nested
    uses share the outer one.
    """
    try:
        import gguf
    except ImportError:  # transformers will say that GGUF needs it
        yield
        return
    if getattr(gguf.GGUFReader, "prunellm_shared", False):
        yield
        return
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: str | os.PathLike, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    shared_reader.prunellm_shared = True  # type: ignore[attr-defined]
    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def clear_gguf_marks(model: PreTrainedModel) -> None:
    """Turn a dequantized GGUF-loaded model into a plain float model that `save_pretrained` accepts.

    transformers refuses to save a model whose quantizer is GGUF, even when every weight was
    unpacked to float; a model whose weights are still packed cannot be saved as float at all.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    quant_config = quantizer.quantization_config if quantizer is not None else None
    if quant_config is None:
        quant_config = getattr(model.config, "quantization_config", None)
    if _quant_method(quant_config) != "gguf":
        return
    if getattr(quantizer, "packed_modules", None):
        raise PrunellmError(
            "model holds packed GGUF weights: load it with prunellm's load_model to get float weights"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The quantizer also sets these; a stale `is_quantized` makes `.float()`/`.half()` refuse.
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    model.is_quantized = False
    log.debug("cleared GGUF quantizer marks on %s", type(model).__name__)


def _quant_method(quant_config: object) -> str | None:
    """The `quant_method` of a quantization config, whether an object, a dict or an enum value."""
    if quant_config is None:
        return None
    if isinstance(quant_config, dict):
        method = quant_config.get("quant_method")
    else:
        method = getattr(quant_config, "quant_method", None)
    return str(getattr(method, "value", method)).lower()

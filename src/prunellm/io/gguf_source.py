"""What loading a GGUF checkpoint with transformers needs beyond a plain `from_pretrained`."""

from __future__ import annotations

import logging
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

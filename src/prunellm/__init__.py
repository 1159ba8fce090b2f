"""prunellm: one-shot pruning and quantization of Hugging Face causal language models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__version__ = "0.1.0"


def load(path: str | Path, device: str | torch.device | None = None, *, keep_compressed: bool | None = None,
         dense_budget: int | None = None, head_bits: int | None = None, embed_bits: int | None = None,
         dense_kernels: bool | None = None, int8_activations: bool = False) -> PreTrainedModel:
    """A saved model ready to run: prunellm's compressed format, compressed-tensors or plain
    Hugging Face. See `prunellm.runtime.load.load`."""
    from prunellm.runtime.load import load as _load

    return _load(path, device, keep_compressed=keep_compressed, dense_budget=dense_budget, head_bits=head_bits,
                 embed_bits=embed_bits, dense_kernels=dense_kernels, int8_activations=int8_activations)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model (any directory `load` reads, a hub id, a .gguf file)."""
    from prunellm.io.load import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)

"""Text to token ids, the one way every loader and evaluator does it."""

from __future__ import annotations

from typing import Any

import torch


def encode(text: str, tokenizer: Any) -> torch.Tensor:
    """Token ids of `text` as a 1-D LongTensor, without special tokens.

    Special tokens are left out because windows are cut from the middle of the text:
    a BOS at position 0 of the whole text would land in one window only. Models that
    need a BOS get one per window instead (see `needs_bos`).
    """
    # verbose=False: a whole corpus is far longer than model_max_length, and that is intended.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)  # (N,)

"""Perplexity on several named texts in one call: the table a pruning run reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from prunellm.data.text import load_eval_text
from prunellm.eval.perplexity import perplexity, tokenize_eval_text

logger = logging.getLogger(__name__)

# SparseGPT scores C4 on its first 256 windows only (the text is far longer than needed).
_C4_EVAL_WINDOWS = 256


def evaluate(
    model: Any,
    tokenizer: Any,
    datasets: list[str],
    *,
    seqlen: int = 2048,
    max_tokens: int | None = None,
    batch_size: int = 1,
    bos_token_id: int | None = None,
    data_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Perplexity per dataset name (wikitext2, ptb, c4 or a text/JSONL path), test splits.

    max_tokens caps the tokens scored (e.g. 32768 for a quick run); without it the whole
    text is used, except c4, which keeps the reference's 256 windows.
    """
    results: dict[str, float] = {}
    for name in datasets:
        ids = eval_token_ids(name, tokenizer, seqlen=seqlen, max_tokens=max_tokens, bos_token_id=bos_token_id,
                             data_dir=data_dir)  # (N,)
        results[name] = perplexity(
            model,
            ids,
            seqlen=seqlen,
            batch_size=batch_size,
            bos_token_id=bos_token_id,
            device=device,
            progress=progress,
        )
        logger.info("%s: perplexity %.3f (%d tokens, seqlen %d)", name, results[name], ids.numel(), seqlen)
    return results


def eval_token_ids(name: str, tokenizer: Any, *, seqlen: int = 2048, max_tokens: int | None = None,
                   bos_token_id: int | None = None, data_dir: str | Path | None = None) -> torch.Tensor:
    """The token ids (N,) `evaluate` scores for one dataset: tokenize once, share across models
    (a sweep scores many compressed copies of one model on the same ids)."""
    cap = max_tokens
    if cap is None and name.lower() == "c4":
        cap = _C4_EVAL_WINDOWS * (seqlen - 1 if bos_token_id is not None else seqlen)
    return tokenize_eval_text(load_eval_text(name, data_dir=data_dir), tokenizer, cap)  # (N,)

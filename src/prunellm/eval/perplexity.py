"""Perplexity the way SparseGPT, Wanda and GPTQ report it.

Tokenize the whole text once, cut it into non-overlapping windows of `seqlen` tokens
(dropping the remainder), score every next-token prediction inside each window and
report exp(mean NLL). Windows do not see each other, so the first tokens of each
window are predicted with little context: that is the protocol, not a bug.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunellm.data.tokenize import encode
from prunellm.errors import PrunellmError

logger = logging.getLogger(__name__)


def tokenize_eval_text(text: str, tokenizer: Any, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of `text` (no special tokens) as a 1-D LongTensor, cut to `max_tokens`."""
    if max_tokens is not None and max_tokens < 1:
        raise PrunellmError(f"max_tokens must be at least 1, got {max_tokens}")
    ids = encode(text, tokenizer)  # (N,)
    # Tokenize everything, then cut: cutting the text first could split a token at the end.
    return ids if max_tokens is None else ids[:max_tokens]


def eval_windows(token_ids: torch.Tensor, seqlen: int, bos_token_id: int | None = None) -> torch.Tensor:
    """(W, seqlen) non-overlapping windows; with BOS each is [bos] + (seqlen - 1) text tokens."""
    if seqlen < 2:
        raise PrunellmError(f"seqlen must be at least 2, got {seqlen}")
    text_len = seqlen - 1 if bos_token_id is not None else seqlen
    num_windows = token_ids.numel() // text_len
    if num_windows == 0:
        raise PrunellmError(
            f"{token_ids.numel()} tokens are fewer than one evaluation window of seqlen {seqlen}"
            + (" (BOS + text)" if bos_token_id is not None else "")
        )
    windows = token_ids[: num_windows * text_len].reshape(num_windows, text_len)  # (W, text_len)
    if bos_token_id is not None:
        bos = torch.full((num_windows, 1), bos_token_id, dtype=windows.dtype)
        windows = torch.cat([bos, windows], dim=1)  # (W, seqlen)
    return windows


def perplexity(
    model: Any,
    token_ids: torch.Tensor,
    *,
    seqlen: int = 2048,
    batch_size: int = 1,
    bos_token_id: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> float:
    """exp(mean NLL) of a causal LM over non-overlapping windows of `token_ids` (N,) or (1, N).

    With `bos_token_id`, every window is [bos] + (seqlen - 1) text tokens and every text
    token is scored; without, the first token of each window is context only. `device`
    defaults to the model's. The model is put in eval mode and restored afterwards.
    """
    if batch_size < 1:
        raise PrunellmError(f"batch_size must be at least 1, got {batch_size}")
    if token_ids.dim() == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids[0]  # accept a tokenizer's (1, N) return_tensors="pt" output
    if token_ids.dim() != 1:
        raise PrunellmError(f"token_ids must be 1-D (N,), got shape {tuple(token_ids.shape)}")
    windows = eval_windows(token_ids.long(), seqlen, bos_token_id)  # (W, seqlen)
    device = torch.device(device) if device is not None else _model_device(model)

    was_training = model.training
    model.eval()
    # float64 so thousands of windows sum without drift; kept on the device so that
    # there is no host sync per window.
    total_nll = torch.zeros((), dtype=torch.float64, device=device)
    num_predicted = 0
    try:
        with torch.no_grad():
            starts = range(0, len(windows), batch_size)
            for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
                batch = windows[start : start + batch_size].to(device)  # (B, T)
                logits = model(input_ids=batch, use_cache=False).logits  # (B, T, V)
                # Per row: logits[b, :-1] is a view, so float32 models copy nothing and
                # half-precision ones copy one window at a time, never the whole batch.
                for b in range(batch.shape[0]):
                    nll = F.cross_entropy(logits[b, :-1].float(), batch[b, 1:], reduction="sum")
                    total_nll += nll.double()
                num_predicted += batch.shape[0] * (batch.shape[1] - 1)
                del logits
    finally:
        model.train(was_training)
    ppl = math.exp(total_nll.item() / num_predicted)
    logger.debug("perplexity %.4f over %d windows of %d tokens", ppl, len(windows), seqlen)
    return ppl


def _model_device(model: Any) -> torch.device:
    # transformers models expose .device (where their inputs go); plain modules do not.
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device

"""Calibration windows: random token windows of a training text, as SparseGPT draws them."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from prunellm.data.corpora import corpus_rows
from prunellm.data.sources import CalibrationSource, calibration_token_ids, check_source_options, source_label
from prunellm.data.tokenize import encode
from prunellm.errors import PrunellmError

logger = logging.getLogger(__name__)

# C4 documents are drawn at random until one is long enough; give up after this many
# misses in a row rather than loop forever on a corpus of short documents.
_MAX_DOCUMENT_DRAWS = 10_000


def load_calibration(
    source: CalibrationSource,
    tokenizer: Any,
    *,
    num_samples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    bos_token_id: int | None = None,
    data_dir: str | Path | None = None,
    config_name: str | None = None,
    split: str | None = None,
    column: str | None = None,
) -> torch.Tensor:
    """`num_samples` random windows of `seqlen` tokens: a (num_samples, seqlen) LongTensor.

    source: "wikitext2" or "ptb" (rows joined with " " as SparseGPT does), "c4" (each window
    from one random document longer than the window), a local file or dataset directory, a
    Hugging Face dataset id, or data given from Python (strings, chat conversations, a
    `datasets.Dataset`, token ids): see `prunellm.data.sources` for how each becomes one token
    stream. split: the corpus's or dataset's split (default "train"); config_name, column: a
    dataset's config and column (default: "text", else "messages" through the chat template).
    Window starts come from `random.Random(seed).randint(0, ntokens - seqlen - 1)`, the same
    stream as the reference's `random.seed(seed)`, so the same token ids give the same windows.
    With `bos_token_id`, every window is [bos] + (seqlen - 1) text tokens.
    """
    if num_samples < 1:
        raise PrunellmError(f"num_samples must be at least 1, got {num_samples}")
    if seqlen < 2:
        raise PrunellmError(f"seqlen must be at least 2, got {seqlen}")
    text_len = seqlen - 1 if bos_token_id is not None else seqlen
    # A private generator: same draws as random.seed(seed), without touching global state.
    rng = random.Random(seed)
    label = source_label(source)
    if check_source_options(source, config_name, split, column) == "corpus" and str(source).lower() == "c4":
        docs = corpus_rows("c4", split or "train", data_dir)
        windows = _document_windows(docs, tokenizer, num_samples, text_len, rng)
    else:
        ids = calibration_token_ids(source, tokenizer, config_name=config_name, split=split, column=column,
                                    data_dir=data_dir)  # (N,)
        if ids.numel() <= text_len:
            raise PrunellmError(
                f"calibration source {label} has {ids.numel()} tokens, too few for windows of "
                f"seqlen {seqlen} (needs at least {text_len + 1})"
            )
        windows = _random_windows(ids, num_samples, text_len, rng)
    if bos_token_id is not None:
        bos = torch.full((num_samples, 1), bos_token_id, dtype=torch.long)
        windows = torch.cat([bos, windows], dim=1)
    logger.info("calibration: %d windows of %d tokens from %s (seed %d)", num_samples, seqlen, label, seed)
    return windows  # (num_samples, seqlen)


def _random_windows(ids: torch.Tensor, num_samples: int, length: int, rng: random.Random) -> torch.Tensor:
    # The upper bound leaves out the last possible start, as the reference does: keeping
    # it keeps the windows identical to the reference's for the same seed.
    starts = [rng.randint(0, ids.numel() - length - 1) for _ in range(num_samples)]
    return torch.stack([ids[i : i + length] for i in starts])  # (S, length)


def _document_windows(
    docs: list[str], tokenizer: Any, num_samples: int, length: int, rng: random.Random
) -> torch.Tensor:
    """SparseGPT's C4 sampling: a random document with more than `length` tokens, then a random window in it."""
    if not docs:
        raise PrunellmError("c4: the calibration corpus has no documents")
    windows = []
    for _ in range(num_samples):
        for _ in range(_MAX_DOCUMENT_DRAWS):
            ids = encode(docs[rng.randint(0, len(docs) - 1)], tokenizer)  # (N,)
            # The reference accepts N == length too, then crashes in randint; require more.
            if ids.numel() > length:
                break
        else:
            raise PrunellmError(
                f"c4: no document longer than {length} tokens in {_MAX_DOCUMENT_DRAWS} random draws"
            )
        windows.append(_random_windows(ids, 1, length, rng)[0])
    return torch.stack(windows)  # (S, length)

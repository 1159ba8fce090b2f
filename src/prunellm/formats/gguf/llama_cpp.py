"""Score a GGUF file with llama.cpp itself (through the llama-cpp-python bindings).

The same windows and the same NLL as `perplexity.perplexity`, so that llama.cpp's figure of an
exported model and prunellm's own figure of the same weights compare like with like. (The
`llama-perplexity` tool scores only the second half of each window; its figures are lower.)
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from prunellm.errors import PrunellmError


def open_llama(path: str | Path, n_ctx: int, threads: int | None = None) -> Any:
    """A llama_cpp.Llama on `path` keeping the logits of every position."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise PrunellmError("llama-cpp-python is not installed (pip install 'prunellm[llama-cpp]')") from None
    if not Path(path).is_file():
        raise PrunellmError(f"GGUF file not found: {path}")
    with _quiet_stderr():
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                     verbose=False, n_threads=threads or os.cpu_count(), seed=0)


def llama_cpp_logits(llm: Any, ids: torch.Tensor) -> np.ndarray:
    """Logits (T, vocab) float32 of one sequence ids (T,), from a fresh context."""
    llm.reset()
    llm.eval(ids.tolist())
    return np.array(llm.scores[: ids.numel()], dtype=np.float32)


def llama_cpp_perplexity(path: str | Path, windows: torch.Tensor, bos_token_id: int | None = None,
                         threads: int | None = None) -> float:
    """exp(mean NLL) over windows (W, seqlen), scored as `perplexity` scores them: every token
    after the first of each window (with a BOS first, that is every text token)."""
    llm = open_llama(path, windows.shape[1], threads)
    total, count = 0.0, 0
    for window in windows:
        logits = torch.from_numpy(llama_cpp_logits(llm, window)[:-1])  # (T-1, V) float32
        nll = -torch.log_softmax(logits, dim=-1).gather(1, window[1:, None].long())  # (T-1, 1)
        total += float(nll.double().sum())
        count += nll.numel()
    del llm
    return math.exp(total / count)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp prints its loading log to fd 2 even with verbose=False in some builds."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)

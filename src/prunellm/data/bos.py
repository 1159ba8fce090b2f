"""Which models need a BOS token at the start of every window they see."""

from __future__ import annotations

from typing import Any

# Gemma models are trained with <bos> always at position 0 and behave badly without it
# (their published perplexities assume it). Their tokenizers add it on their own, but
# windows cut from one long tokenized text do not start with it, so evaluation and
# calibration put it back per window. Llama/SmolLM2/Qwen/OPT-style models are evaluated
# without it in the papers' protocol, so they are left out.
_BOS_MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


def needs_bos(config: Any) -> bool:
    """True when windows for this model (a transformers config) must start with BOS."""
    return getattr(config, "model_type", None) in _BOS_MODEL_TYPES

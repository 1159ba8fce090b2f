"""Greedy or sampled text generation from a loaded model: what `prunellm generate` runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from prunellm.errors import PrunellmError


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def generate_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 64,
                  temperature: float = 0.0, seed: int = 0) -> Generation:
    """Continue `prompt`: greedy at temperature 0, else sampled (seeded)."""
    if max_new_tokens < 1:
        raise PrunellmError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise PrunellmError(f"--temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    encoded = tokenizer(prompt, return_tensors="pt").to(device)
    if encoded["input_ids"].shape[1] == 0:
        raise PrunellmError("the prompt is empty")
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(tokenizer),
                                top_p=None, top_k=None, **sampling)
    seconds = time.perf_counter() - started
    prompt_tokens = encoded["input_ids"].shape[1]
    new = output[0, prompt_tokens:]
    return Generation(tokenizer.decode(new, skip_special_tokens=True), prompt_tokens, int(new.numel()), seconds)


def _pad_id(tokenizer: Any) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

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
                  temperature: float = 0.0, seed: int = 0, own_loop: bool = True) -> Generation:
    """Continue `prompt`: greedy at temperature 0, else sampled (seeded).

    own_loop: on a CPU, a model runtime/decode_loop.py runs (Llama, Qwen2) whose generation
    config adds no logits processor decodes on that loop, picking tokens as generate does;
    False (or any other model) takes Hugging Face's generate."""
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
    prompt_tokens = encoded["input_ids"].shape[1]
    if own_loop and _plain_generation(model):
        from .decode_loop import DecodeLoop

        loop = DecodeLoop(model, prompt_tokens + max_new_tokens)
        new = loop.generate(encoded["input_ids"], max_new_tokens, temperature, _eos_ids(model),
                            _pad_id(tokenizer))[0]
    else:
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(tokenizer),
                                    top_p=None, top_k=None, **sampling)
        new = output[0, prompt_tokens:]
    seconds = time.perf_counter() - started
    return Generation(tokenizer.decode(new, skip_special_tokens=True), prompt_tokens, int(new.numel()), seconds)


def _pad_id(tokenizer: Any) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# Generation settings that make generate process the logits (or search beams) when set away
# from these values; the own loop only picks greedily or samples from the temperature's softmax.
_NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
            "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
            "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
            "sequence_bias": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
            "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "guidance_scale": None,
            "watermarking_config": None, "penalty_alpha": None, "diversity_penalty": 0.0, "assistant_model": None,
            "prompt_lookup_num_tokens": None, "stop_strings": None}


def _plain_generation(model: Any) -> bool:
    """Whether the own decode loop gives generate's tokens for this model: one it runs
    (decode_loop.supports) and a generation config with nothing but greedy or temperature sampling."""
    from .decode_loop import supports

    if not supports(model):
        return False
    config = getattr(model, "generation_config", None)
    for name, neutral in _NEUTRAL.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral:
            return False
    return True


def _eos_ids(model: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)

"""What llama.cpp needs to know about a Hugging Face architecture: its GGUF name, the
hyper-parameters it reads, and how tensors change on the way (written for the architectures
tested here, following the rules of llama.cpp's own converter, convert_hf_to_gguf.py).

- llama: q/k rows permuted (llama.cpp rotates interleaved pairs, transformers the two halves of
  each head); rope.dimension_count and vocab_size written.
- qwen2: no permutation (llama.cpp rotates it as transformers does); q/k/v biases.
- gemma3: RMSNorm weights stored with the +1 transformers adds at run time; the embedding
  scale sqrt(hidden) is llama.cpp's own (nothing written); sliding window, the per-layer
  sliding pattern and the local rope base written; llama.cpp scales attention by
  1/sqrt(head_dim), so a config with another query_pre_attn_scalar is refused.

Anything else is refused with one line: a wrong GGUF loads and produces garbage silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from prunellm.errors import PrunellmError

# Rope types llama.cpp reads from metadata alone (llama3's scaling needs a rope_freqs tensor).
_PLAIN_ROPE = (None, "default", "linear")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: gguf_name (general.architecture), permute_qk (llama's row order),
    norm_shift (added to every RMSNorm weight), hparams (config -> {key suffix: value})."""

    gguf_name: str
    permute_qk: bool
    norm_shift: float
    hparams: Callable[[Any], dict[str, Any]]


def arch_for(config: Any) -> ArchSpec:
    """The spec of a model's architecture, or a one-line refusal."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHS.get(model_type)
    if spec is None:
        raise PrunellmError(f"GGUF output from a Hugging Face model supports {', '.join(sorted(ARCHS))}; "
                            f"this model is '{model_type}' (load a .gguf of it instead)")
    return spec


def head_dim(config: Any) -> int:
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def rope_params(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """The rope settings of one layer kind (transformers 5 `rope_parameters`, 4.x `rope_theta`
    and `rope_scaling`)."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    elif any(isinstance(v, dict) for v in params.values()):
        params = {}
    params = dict(params)
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _common(config: Any) -> dict[str, Any]:
    """The keys every decoder here shares (llama.cpp's TextModel parameters)."""
    rope = rope_params(config)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type not in _PLAIN_ROPE:
        raise PrunellmError(f"rope type '{rope_type}' is not supported for GGUF output (default and linear are)")
    keys: dict[str, Any] = {
        "context_length": int(config.max_position_embeddings),
        "embedding_length": int(config.hidden_size),
        "block_count": int(config.num_hidden_layers),
        "feed_forward_length": int(config.intermediate_size),
        "attention.head_count": int(config.num_attention_heads),
        "attention.head_count_kv": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "rope.freq_base": float(rope.get("rope_theta", 10000.0)),
    }
    if rope_type == "linear" and rope.get("factor"):
        keys["rope.scaling.type"] = "linear"
        keys["rope.scaling.factor"] = float(rope["factor"])
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        keys["attention.key_length"] = keys["attention.value_length"] = head_dim(config)
    return keys


def _llama(config: Any) -> dict[str, Any]:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise PrunellmError("GGUF output: a llama model with attention or MLP biases is not supported")
    return {**_common(config), "vocab_size": int(config.vocab_size), "rope.dimension_count": head_dim(config)}


def _qwen2(config: Any) -> dict[str, Any]:
    if getattr(config, "use_sliding_window", False):
        raise PrunellmError("GGUF output: Qwen2 with use_sliding_window is not supported (llama.cpp ignores it)")
    return _common(config)


def _gemma3(config: Any) -> dict[str, Any]:
    dim = head_dim(config)
    scalar = getattr(config, "query_pre_attn_scalar", dim)
    if scalar != dim:
        raise PrunellmError(f"GGUF output: llama.cpp scales Gemma-3 attention by 1/sqrt(head_dim={dim}); "
                            f"this config's query_pre_attn_scalar is {scalar}")
    if getattr(config, "attn_logit_softcapping", None):
        raise PrunellmError("GGUF output: Gemma-3 with attention logit soft-capping is not supported by llama.cpp")
    keys = {**_common(config), "attention.key_length": dim, "attention.value_length": dim}
    if getattr(config, "final_logit_softcapping", None):
        keys["final_logit_softcapping"] = float(config.final_logit_softcapping)
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "sliding_window", None) and "sliding_attention" in layer_types:
        keys["attention.sliding_window"] = int(config.sliding_window)
        # Per layer (True: sliding), which llama.cpp reads instead of its default period of 6.
        keys["attention.sliding_window_pattern"] = [t == "sliding_attention" for t in layer_types]
        local = rope_params(config, "sliding_attention").get("rope_theta")
        if local is None:
            local = getattr(config, "rope_local_base_freq", None)
        if local is not None:
            keys["rope.freq_base_swa"] = float(local)
    return keys


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", True, 0.0, _llama),
    "qwen2": ArchSpec("qwen2", False, 0.0, _qwen2),
    "gemma3_text": ArchSpec("gemma3", False, 1.0, _gemma3),
    "gemma3": ArchSpec("gemma3", False, 1.0, _gemma3),
}


def permute_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows (dim 0) of a q/k weight, bias or per-row grid parameters in llama.cpp's order: the two
    rotary halves of every head interleaved."""
    rows = t.shape[0]
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)

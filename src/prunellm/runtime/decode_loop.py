"""A lean decode loop on the CPU for the Llama family as transformers implements it.

At a small model's decode most of a step is not the layers' products but Hugging Face's
per-token Python: module calls, mask and cache bookkeeping, SDPA for one query. This loop
reads the loaded model's own modules and weights and runs a step as few torch operations:

    loop = DecodeLoop(model, max_len=T + n, batch_size=B)
    logits = loop.prefill(ids)        # (B, T) -> (B, V): one call of the model itself
    logits = loop.step(next_tokens)   # (B,) -> (B, V): one token per row

- linear layers (q/k/v/o, gate/up/down, the head) through their own forward: nn.Linear,
  CompressedLinear or DecodeLinear, whatever the load made of them;
- RMSNorm inline, the same operations as the model's (float32 statistics, cast back);
- rotary tables from the model's own `model.model.rotary_emb` (its rope scaling), computed
  once for every position, or per step for rope types that depend on the length (dynamic, longrope);
- a static key/value cache, per layer (B, kv_heads, max_len, head_dim), filled from the prefill's
  cache: float32, or bfloat16 for a bfloat16 model on native blocks (its keys and values are
  bfloat16: exact either way, half the bytes); attention for one query as plain float32
  products over the filled prefix (q @ Kᵀ * scale, softmax, @ V), grouped-query heads without
  repeating K and V.

Logits equal the model's (with a DynamicCache) up to float rounding: a float32 model's to
about 1e-7, a bfloat16 model's to its rounding (SmolLM2 in bfloat16: closer to the float32
model's logits than its own SDPA's, tests/runtime/test_decode_loop.py). `supports(model)` says
which models it takes: LlamaForCausalLM and Qwen2ForCausalLM with full attention in every layer
(no sliding window), on the CPU; everything else takes Hugging Face's path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .embedding import QuantizedEmbedding, embedding_dtype

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _linear_types() -> tuple[type, ...]:
    from .dense_decode import DecodeLinear
    from .linear import CompressedLinear

    return nn.Linear, CompressedLinear, DecodeLinear


def supports(model: nn.Module) -> bool:
    """Whether DecodeLoop runs `model` exactly: a Llama or Qwen2 causal LM on the CPU whose
    layers are all full attention, with the modules the loop reads in their expected kinds."""
    if type(model).__name__ not in ARCHITECTURES or not hasattr(model, "model"):
        return False
    config, inner = model.config, model.model
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False  # sliding windows (Qwen2's use_sliding_window) or other attention
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    try:
        parameter = next(model.parameters())
    except StopIteration:
        return False
    if parameter.device.type != "cpu" or parameter.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if type(inner.embed_tokens) not in (nn.Embedding, QuantizedEmbedding) or not hasattr(inner, "rotary_emb"):
        return False
    if len(inner.layers) != config.num_hidden_layers:
        return False
    linears = _linear_types()
    if not isinstance(model.lm_head, linears):
        return False
    for layer in inner.layers:
        if not all(isinstance(layer.get_submodule(name), linears) for name in PROJECTIONS):
            return False
        if not all(_is_rms_norm(norm) for norm in (layer.input_layernorm, layer.post_attention_layernorm)):
            return False
    return _is_rms_norm(inner.norm)


def _is_rms_norm(module: nn.Module) -> bool:
    """Llama's and Qwen2's RMSNorm (weight * x / rms(x)), not Gemma's (1 + weight)."""
    return type(module).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm") and hasattr(module, "variance_epsilon")


def has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on the module (a call must go through nn.Module.__call__)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _call(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's forward itself (skipping nn.Module.__call__'s checks), or the module where
    hooks are registered on it (they must run)."""
    return module if has_hooks(module) else module.forward


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's operations, in its order: statistics in float32, cast back, times weight."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class _Layer:
    """One decoder block's modules and weights, gathered once."""

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (_call(attn.q_proj), _call(attn.k_proj), _call(attn.v_proj),
                                          _call(attn.o_proj))
        self.gate, self.up, self.down = _call(mlp.gate_proj), _call(mlp.up_proj), _call(mlp.down_proj)
        self.act = mlp.act_fn
        self.norm1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon


class DecodeLoop:
    """Prefill through the model, then one token a step on a static key/value cache."""

    def __init__(self, model: nn.Module, max_len: int, batch_size: int = 1, native_blocks: bool = True,
                 kv_dtype: torch.dtype | None = None) -> None:
        if not supports(model):
            raise ValueError(f"DecodeLoop does not run {type(model).__name__} (see decode_loop.supports)")
        config, inner = model.config, model.model
        self.model = model
        self.max_len, self.batch_size = max_len, batch_size
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        attn = inner.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.dtype = embedding_dtype(inner.embed_tokens)
        self.embed = inner.embed_tokens  # ids (B,) -> (B, C): a table or its quantized rows (runtime/embedding.py)
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.norm, self.eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = _call(model.lm_head)
        # Each block's step as one native call where the kernels read every projection
        # (runtime/decode_block.py); else the torch operations below. native_blocks=False keeps
        # the torch path (the bench compares the two).
        from .decode_block import NativeBlocks, cache_dtype, qualifies

        native = native_blocks and qualifies(inner.layers, self.dtype, batch_size)
        shape = (batch_size, self.kv_heads, max_len, self.head_dim)
        # Keys and values are the model's (a bfloat16 model's are bfloat16, exact in float32 too)
        # and attention sums in float32 as SDPA's CPU kernel does, without rounding the scores to
        # bfloat16 on the way (eager attention's loss). The torch path's products read a float32
        # cache; native blocks widen a bfloat16 one as they read it (half the bytes: at long
        # contexts the cache is most of what a step reads beside the weights). kv_dtype: None
        # for that choice, float32 (the bench's comparison), or bfloat16 for a bfloat16 model.
        if kv_dtype not in (None, torch.float32) and kv_dtype != cache_dtype(self.dtype):
            raise ValueError(f"a {self.dtype} model's key/value cache cannot be {kv_dtype}: its keys would be rounded")
        self.kv_dtype = kv_dtype or (cache_dtype(self.dtype) if native else torch.float32)
        self.keys = [torch.zeros(shape, dtype=self.kv_dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.kv_dtype) for _ in self.layers]
        self.length = 0  # positions filled in the cache
        self.rotary = inner.rotary_emb
        rope_type = getattr(self.rotary, "rope_type", "default")
        # Rope types whose tables depend on the length seen so far (transformers'
        # dynamic_rope_update) are asked per step, as the model itself does at decode.
        self.rope_per_step = "dynamic" in str(rope_type) or rope_type == "longrope"
        self.cos = self.sin = None
        if not self.rope_per_step:
            self.cos, self.sin = self._rope(torch.arange(max_len)[None])  # (max_len, D) each
        self.blocks = None
        if native:
            self.blocks = NativeBlocks.build(inner.layers, self.keys, self.values, self.heads, self.kv_heads,
                                             self.head_dim, self.scaling, batch_size, self.dtype)

    @torch.inference_mode()
    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (P, D) from the model's rotary embedding, sin with rotate_half's sign folded
        in: rotate_half(q) * sin == roll(q, D/2) * signed_sin, exactly (a sign flip is exact)."""
        probe = torch.zeros(1, 1, 1, dtype=self.dtype)  # only its dtype and device are read
        cos, sin = self.rotary(probe, position_ids=positions)  # (1, P, D) each
        half = self.head_dim // 2
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos[0].contiguous(), signed[0].contiguous()

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> the logits (B, V) after the last one, from one call of the model with a
        DynamicCache, whose keys and values then fill this loop's cache."""
        from transformers import DynamicCache

        from .bench_infer import cache_argument

        batch, length = ids.shape
        if batch != self.batch_size or length + 1 > self.max_len or length < 1:
            raise ValueError(f"prompt of shape {tuple(ids.shape)} for a loop of batch {self.batch_size} "
                             f"and {self.max_len} positions")
        cache = DynamicCache()
        out = self.model(ids, use_cache=True, logits_to_keep=1, **{cache_argument(self.model): cache})
        for index, (keys, values) in enumerate(_cache_tensors(cache, len(self.layers))):
            self.keys[index][:, :, :length] = keys  # (B, KV, T, D)
            self.values[index][:, :, :length] = values
        self.length = length
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at the next position -> the logits (B, V) after them."""
        pos = self.length
        if pos >= self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions, all filled")
        if self.rope_per_step:
            cos, sin = self._rope(torch.tensor([[pos]]))
            cos, sin = cos[0], sin[0]  # (D,)
        else:
            cos, sin = self.cos[pos], self.sin[pos]  # (D,)
        B, H, KV, D = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        half, end = D // 2, pos + 1
        x = self.embed(tokens)  # (B, C)
        if self.blocks is not None and tokens.shape[0] == self.batch_size:
            x = x.contiguous()
            self.blocks.run(x, cos, sin, pos)  # every block, x in place
            self.length = end
            return self.head(_rms_norm(x, self.norm, self.eps))  # (B, V)
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            h = _rms_norm(x, layer.norm1, layer.eps1)
            q = layer.q(h).view(B, H, D)
            k = layer.k(h).view(B, KV, D)
            q = (q * cos + q.roll(half, dims=-1) * sin).float()  # rope: roll(q, D/2) swaps rotate_half's halves
            keys[:, :, pos] = k * cos + k.roll(half, dims=-1) * sin
            values[:, :, pos] = layer.v(h).view(B, KV, D)
            # grouped-query attention: query heads g*G .. g*G+G-1 read key/value head g
            # a bfloat16 cache (native blocks' loop at another batch) widened for the products
            cached_keys, cached_values = keys[:, :, :end].to(torch.float32), values[:, :, :end].to(torch.float32)
            scores = q.view(B, KV, H // KV, D) @ cached_keys.transpose(-1, -2) * self.scaling  # (B, KV, G, L)
            probs = torch.softmax(scores, dim=-1)
            attn = (probs @ cached_values).reshape(B, H * D).to(self.dtype)  # (B, KV, G, D) -> (B, H * D)
            x = x + layer.o(attn)
            h = _rms_norm(x, layer.norm2, layer.eps2)
            x = x + layer.down(layer.act(layer.gate(h)) * layer.up(h))
        self.length = end
        return self.head(_rms_norm(x, self.norm, self.eps))  # (B, V)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 eos_token_ids: Iterable[int] = (), pad_token_id: int | None = None) -> torch.Tensor:
        """New tokens (B, n <= max_new_tokens) after ids (B, T), as Hugging Face's generate picks
        them: greedy at temperature 0, else multinomial from softmax(logits / temperature) on
        torch's global generator; a row that gave an end token is padded after it, and the loop
        stops once every row has."""
        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        unfinished = torch.ones(ids.shape[0], dtype=torch.long)
        logits = self.prefill(ids)
        new: list[torch.Tensor] = []
        for index in range(max_new_tokens):
            scores = logits.to(torch.float32)  # (B, V), as generate scores them
            if temperature > 0:
                probs = torch.softmax(scores / temperature, dim=-1)
                token = torch.multinomial(probs, num_samples=1).squeeze(1)  # (B,)
            else:
                token = scores.argmax(dim=-1)  # (B,)
            if eos.numel():
                if pad_token_id is not None:
                    token = token * unfinished + pad_token_id * (1 - unfinished)
                unfinished = unfinished & ~torch.isin(token, eos)
            new.append(token)
            if eos.numel() and not unfinished.any() or index == max_new_tokens - 1:
                break
            logits = self.step(token)
        return torch.stack(new, dim=1)


def _cache_tensors(cache: object, layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each (B, KV, T, D), from a transformers DynamicCache (its
    `layers` in transformers 5, `key_cache`/`value_cache` lists before)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers[:layers]]
    return list(zip(cache.key_cache[:layers], cache.value_cache[:layers]))

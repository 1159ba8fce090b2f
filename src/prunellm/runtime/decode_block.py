"""A decoder block's decode step as one native call (native/csrc/decode_block.cpp).

runtime/decode_loop.py runs a Llama or Qwen2 block at decode as about forty torch operators
around seven kernel calls; at a small model that was a third of a step (bench/README.md, "A
decode step"). Where every projection of every block is read by the native kernels, the loop
hands each block to `pnl_decode_block` instead: RMSNorm, q/k/v (one team call), rotary, the
cache write, attention, o and the residual, RMSNorm, gate/up (one team call), SiLU, down and the
residual, with each intermediate rounded to the model's dtype where the torch loop rounds it.

    blocks = NativeBlocks.build(layers, keys, values, ...)   # None when a block does not qualify
    blocks.run(x, cos, sin, pos)                              # x (B, C) in place

The structs point at the model's weights, norms and the loop's caches as they are at build: a
DecodeLoop builds them for its own life, during which the model is not moved or cast. Attention
runs on the calling thread, the products on the thread team: at a few hundred positions
attention is a small part of a step, at thousands most of it (bench/README.md, "A decode step").
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import nn

from . import cpu_kernels
from .cpu_kernels import NativeWeight, _PnlWeight
from .decode_loop import has_hooks

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 2}  # PnlValueKind's PNL_F32 and PNL_BF16
# The block's projections in PnlBlock.proj's order, as decode_loop names them.
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class _PnlBlock(ctypes.Structure):
    _fields_ = [("proj", ctypes.POINTER(_PnlWeight) * 7), ("bias", ctypes.c_void_p * 7),
                ("norm", ctypes.c_void_p * 2), ("eps", ctypes.c_float * 2),
                ("keys", ctypes.c_void_p), ("values", ctypes.c_void_p), ("max_len", ctypes.c_int64),
                ("heads", ctypes.c_int32), ("kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("scaling", ctypes.c_float), ("kv_bf16", ctypes.c_int32)]


def kernel_weight(module: nn.Module, dtype: torch.dtype, tokens: int) -> NativeWeight | None:
    """The native weight a projection's call of `tokens` tokens in `dtype` would run on, or None
    where its forward would take another path (torch's product, an expansion) or has hooks."""
    from .dense_decode import DecodeLinear
    from .linear import CompressedLinear

    if has_hooks(module) or type(module) not in (CompressedLinear, DecodeLinear):
        return None
    return module.native_for(dtype, tokens)


def cache_dtype(dtype: torch.dtype) -> torch.dtype:
    """The key/value cache's dtype for native blocks of a `dtype` model: a bfloat16 model's keys
    and values are bfloat16 (the block rounds them where the torch loop does), so its cache holds
    them in bfloat16, exactly, at half the bytes attention reads; a float32 model's, float32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _is_silu(act: nn.Module) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _norms(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    return layer.input_layernorm, layer.post_attention_layernorm


def qualifies(layers: Sequence[nn.Module], dtype: torch.dtype, batch_size: int) -> bool:
    """Whether NativeBlocks.build takes these decoder layers for activations of `dtype` and
    `batch_size` tokens a step: the library built, float32 or bfloat16, SiLU, norms' weights in
    that dtype (a float32 norm in a bfloat16 model would promote the torch loop's activations),
    and every projection on the kernels at that call size."""
    if dtype not in DTYPE_CODES or not cpu_kernels.available():
        return False
    return all(_is_silu(layer.mlp.act_fn) and
               all(norm.weight.dtype == dtype and norm.weight.is_contiguous() for norm in _norms(layer)) and
               all(kernel_weight(layer.get_submodule(name), dtype, batch_size) is not None for name in PROJECTIONS)
               for layer in layers)


class NativeBlocks:
    """Every decoder block of a model as a PnlBlock; holds the tensors its pointers read."""

    def __init__(self, structs: list[_PnlBlock], kept: list[torch.Tensor], dtype: torch.dtype) -> None:
        self.structs = structs
        self.refs = [ctypes.byref(struct) for struct in structs]
        self.kept = kept  # the biases in float32: alive as long as the pointers
        self.dtype_code = DTYPE_CODES[dtype]
        self.dtype = dtype

    @classmethod
    def build(cls, layers: Sequence[nn.Module], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
              heads: int, kv_heads: int, head_dim: int, scaling: float, batch_size: int,
              dtype: torch.dtype) -> NativeBlocks | None:
        """The blocks of `layers` (the model's decoder layers), or None where one does not
        qualify: the library missing, a dtype other than float32/bfloat16, a projection the
        kernels would not take at `batch_size` tokens, an activation other than SiLU. The caches
        are float32, or bfloat16 in a bfloat16 model (cache_dtype)."""
        if not qualifies(layers, dtype, batch_size):
            return None
        structs, kept = [], []
        for layer, layer_keys, layer_values in zip(layers, keys, values, strict=True):
            struct = _PnlBlock()
            for index, name in enumerate(PROJECTIONS):
                module = layer.get_submodule(name)
                struct.proj[index] = ctypes.pointer(kernel_weight(module, dtype, batch_size).struct)
                if module.bias is not None:
                    bias = module.bias.detach().float().contiguous()
                    kept.append(bias)
                    struct.bias[index] = bias.data_ptr()
            for index, norm in enumerate(_norms(layer)):
                struct.norm[index] = norm.weight.data_ptr()  # read in place: the model holds it
                struct.eps[index] = norm.variance_epsilon
            kv_dtype = cache_dtype(dtype)
            for cache in (layer_keys, layer_values):
                if cache.dtype not in (torch.float32, kv_dtype) or not cache.is_contiguous():
                    return None
            if layer_keys.dtype != layer_values.dtype:
                return None
            struct.keys, struct.values = layer_keys.data_ptr(), layer_values.data_ptr()
            struct.kv_bf16 = int(layer_keys.dtype == torch.bfloat16)
            struct.max_len = layer_keys.shape[2]
            struct.heads, struct.kv_heads, struct.head_dim, struct.scaling = heads, kv_heads, head_dim, scaling
            structs.append(struct)
        return cls(structs, kept, dtype)

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: int) -> None:
        """x (B, C) contiguous in the model's dtype: the hidden states after the embeddings,
        becomes the last block's output; cos and sin (D,) contiguous: the rotary tables at `pos`."""
        lib = cpu_kernels._require()
        threads, level = torch.get_num_threads(), cpu_kernels.LEVELS[cpu_kernels.isa()]
        x_ptr, cos_ptr, sin_ptr, batch = x.data_ptr(), cos.data_ptr(), sin.data_ptr(), x.shape[0]
        for ref in self.refs:
            done = lib.pnl_decode_block(ref, x_ptr, batch, self.dtype_code, cos_ptr, sin_ptr, pos, threads, level)
            if done != 0:
                raise RuntimeError(f"native decode block failed (code {done})")

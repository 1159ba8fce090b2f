"""A linear layer whose weight stays compressed in memory, in the layouts of io/compressed.

Each call takes the fastest path the machine has for its size: on a GPU, a Triton kernel that
reads the compressed weight directly when one exists for the layout and the call has few
tokens (decode); otherwise the weight is expanded for this call only and multiplied densely
(prefill, CPUs), so that at most one layer is dense at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from prunellm.io.compressed.layer import CompressedWeight, LayerSpec, decompress_weight

# Tokens per call up to which a GPU kernel reads the compressed weight (above: expand, then dense).
KERNEL_MAX_TOKENS = 16


class CompressedLinear(nn.Module):
    """y = x W^T + b with W held as a CompressedWeight (its parts are buffers: they follow .to(device)).

    use_kernels: None chooses by device (CUDA with Triton: yes), False always expands.
    """

    def __init__(self, packed: CompressedWeight, bias: torch.Tensor | None = None,
                 use_kernels: bool | None = None) -> None:
        super().__init__()
        self.spec: LayerSpec = packed.spec
        self.out_features, self.in_features = packed.spec.shape
        self.parts = tuple(packed.tensors)
        for part, tensor in packed.tensors.items():
            self.register_buffer(part, tensor)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.use_kernels = use_kernels

    @property
    def packed(self) -> CompressedWeight:
        return CompressedWeight(self.spec, {part: getattr(self, part) for part in self.parts})

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight, expanded."""
        return decompress_weight(self.packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (tokens, in)
        if self._kernel_for(flat):
            from . import kernels

            y = kernels.compressed_matmul(flat, self.packed)  # (tokens, out)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        # Expanded for this call only (freed on return); on x as given, as nn.Linear would do it,
        # so that the result is bit for bit the dense layer's.
        return F.linear(x, self.dense_weight().to(x.dtype), self.bias)

    def _kernel_for(self, flat: torch.Tensor) -> bool:
        if self.use_kernels is False or flat.device.type != "cuda" or flat.shape[0] > KERNEL_MAX_TOKENS:
            return False
        from . import kernels

        return kernels.available() and flat.dtype == _dtype(self.spec) and kernels.supports(self.spec, flat.shape[0])

    def extra_repr(self) -> str:
        spec = self.spec
        pattern = f", {spec.n}:{spec.m}" if spec.layout == "nm" else ""
        bits = f", {spec.bits}-bit g{spec.group_size or 'row'}" if spec.quantized else ""
        return f"in={self.in_features}, out={self.out_features}, {spec.layout}{pattern}{bits}"


def _dtype(spec: LayerSpec) -> torch.dtype:
    from prunellm.io.compressed.layer import DTYPES

    return DTYPES[spec.dtype]

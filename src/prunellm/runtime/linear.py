"""A linear layer whose weight stays compressed in memory, in the layouts of formats/compressed.

Each call takes the fastest path the machine has for its size: on a GPU, a Triton kernel that
reads the compressed weight directly when one exists for the layout and the call has few
tokens (decode); otherwise the weight is expanded for this call only and multiplied densely
(prefill on a GPU, by a Triton kernel where one reads the layout), so that at most one layer is
dense at a time; on a CPU a band of rows at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from prunellm.formats.compressed.layer import CompressedWeight, LayerSpec, decompress_weight, slice_rows

# Tokens per call up to which a GPU kernel reads the compressed weight (above: expand, then dense).
KERNEL_MAX_TOKENS = 16
# Weights per band of rows expanded at a time on a CPU (128 rows of a 4096-wide layer: 1 MiB in
# float16, 2 MiB as float32 on the way); chosen by a one-off timing at LLaMA-7B shapes (no bench
# script compares band sizes; bench/cpu_decode.py times this one: bench/README.md, section "Deploy").
CPU_BAND_ELEMENTS = 1 << 19


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
        """The (out, in) weight, expanded: on a GPU by one Triton kernel where it reads the layout
        (a prefill then multiplies on tensor cores), else by torch operations. Both bit-exact."""
        packed = self.packed
        if self.use_kernels is not False and self.parts_device().type == "cuda":
            from . import kernels

            if kernels.available() and kernels.can_expand(self.spec):
                return kernels.expand(packed)
        return decompress_weight(packed)

    def parts_device(self) -> torch.device:
        """Where the packed parts are."""
        return getattr(self, self.parts[0]).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (tokens, in)
        if self._kernel_for(flat):
            from . import kernels

            y = kernels.compressed_matmul(flat, self.packed)  # (tokens, out)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        if x.device.type != "cpu" or flat.shape[0] > 1:
            # Expanded for this call only (freed on return); on x as given, as nn.Linear would do
            # it, so that the result is bit for bit the dense layer's.
            return F.linear(x, self.dense_weight().to(x.dtype), self.bias)
        # One token on a CPU (decode): expanded a band of rows at a time, each band staying in
        # cache from its expansion to its product (faster than expanding the whole layer: see
        # bench/README.md, section "Deploy"), the layer never dense in memory. A product with one
        # token is a dot product per output, the same whatever the band: bit for bit the dense
        # result. (With more tokens the matrix product's blocking depends on the band, so prefill
        # expands the whole layer.)
        out = x.new_empty(*x.shape[:-1], self.out_features)
        band = max(CPU_BAND_ELEMENTS // self.in_features, 16)
        packed = self.packed
        for start in range(0, self.out_features, band):
            stop = min(start + band, self.out_features)
            weight = decompress_weight(slice_rows(packed, start, stop)).to(x.dtype)  # (band, in)
            bias = self.bias[start:stop] if self.bias is not None else None
            out[..., start:stop] = F.linear(x, weight, bias)
        return out

    def _kernel_for(self, flat: torch.Tensor) -> bool:
        if self.use_kernels is False or flat.device.type != "cuda" or flat.shape[0] > KERNEL_MAX_TOKENS:
            return False
        from . import kernels

        return kernels.available() and flat.dtype == _dtype(self.spec) and kernels.supports(self.spec, flat.shape[0])

    def extra_repr(self) -> str:
        spec = self.spec
        pattern = f", {spec.n}:{spec.m}" if spec.layout == "nm" else ""
        bits = f", {spec.bits}-bit {f'g{spec.group_size}' if spec.group_size else 'per row'}" if spec.quantized else ""
        return f"in={self.in_features}, out={self.out_features}, {spec.layout}{pattern}{bits}"


def _dtype(spec: LayerSpec) -> torch.dtype:
    from prunellm.formats.compressed.layer import DTYPES

    return DTYPES[spec.dtype]

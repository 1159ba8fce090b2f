"""A linear layer whose weight stays compressed in memory, in the layouts of formats/compressed.

Each call takes the fastest path the machine has for its size:

- calls of few tokens (decode: KERNEL_MAX_TOKENS on a GPU; on a CPU up to the layout's limit in
  runtime/token_limits.py) go through a kernel that reads the compressed weight directly,
  where one reads the layout: on a GPU a Triton kernel (runtime/kernels.py), on a CPU the
  native library (runtime/cpu_kernels.py) once the layer is repacked for it (`prepare_cpu`,
  which `prunellm.load` calls at load);
- larger calls (prefill) expand the weight for this call only and multiply densely, bit for
  bit the dense layer's result, so that at most one layer is dense at a time;
- a layer no kernel reads is expanded per call; on a CPU a band of rows at a time for one token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from prunellm.formats.compressed.layer import CompressedWeight, LayerSpec, decompress_weight, slice_rows

if TYPE_CHECKING:
    from .cpu_kernels import NativeWeight

# Tokens per call up to which a GPU kernel reads the compressed weight (the Triton kernels read
# at most 16); above, the layer is expanded for the call and multiplied densely (dense products
# win once a call has enough tokens to reuse each weight many times). A CPU's limits depend on
# the layout and the activations: runtime/token_limits.py.
KERNEL_MAX_TOKENS = 16
# Weights per band of rows expanded at a time on a CPU without the native kernels (128 rows of
# a 4096-wide layer: 1 MiB in float16, 2 MiB as float32 on the way); chosen by a one-off timing
# at LLaMA-7B shapes (bench/cpu_decode.py times this one: bench/README.md, section "Deploy").
CPU_BAND_ELEMENTS = 1 << 19


class CompressedLinear(nn.Module):
    """y = x W^T + b with W held compressed.

    Built from a CompressedWeight, whose parts become buffers (they follow .to(device)).
    `prepare_cpu()` repacks them for the native CPU kernels and drops them: the layer then holds
    only the repacked buffers (a plain attribute, `native`, that .to() does not move), which it
    also expands from for a prefill. Such a layer's state_dict no longer holds its weight:
    a model loaded for running is not a checkpoint to save (save the model before loading it).

    use_kernels: None chooses by device, False never uses a kernel (always expands).
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
        self.native: NativeWeight | None = None
        self._cpu_limits: dict[torch.dtype, int] = {}
        # Set by runtime/int8_activations.py (with the native weight's flag): every product
        # rounds its activations to int8 blocks first, a prefill's expanded one included.
        self.int8_activations = False

    def prepare_cpu(self) -> bool:
        """Repack the weight for the native CPU kernels and drop the file's parts, when the
        library is built and reads this layout (and the parts are on the CPU); returns whether
        the layer now runs on them. Refuses parts that do not match the spec (PrunellmError)."""
        from . import cpu_kernels, token_limits

        if self.native is not None:
            return True
        if self.use_kernels is False or self.parts_device().type != "cpu":
            return False
        if not cpu_kernels.available() or not cpu_kernels.supports(self.spec):
            return False
        self.native = cpu_kernels.prepare(self.spec, self.packed.tensors)
        self._cpu_limits = token_limits.limits(self.native.layout.code_bits, cpu_kernels.isa())
        for part in self.parts:
            delattr(self, part)
        self.parts = ()
        return True

    @property
    def packed(self) -> CompressedWeight:
        if self.native is not None:
            raise RuntimeError("this layer was repacked for the native CPU kernels and holds no file parts; "
                               "dense_weight() gives its weight")
        return CompressedWeight(self.spec, {part: getattr(self, part) for part in self.parts})

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight, expanded: from the native layout on a CPU, on a GPU by one Triton
        kernel where it reads the layout (a prefill then multiplies on tensor cores), else by
        torch operations. All bit-exact."""
        if self.native is not None:
            from . import cpu_kernels

            return cpu_kernels.expand(self.native)
        packed = self.packed
        if self.use_kernels is not False and self.parts_device().type == "cuda":
            from . import kernels

            if kernels.available() and kernels.can_expand(self.spec):
                return kernels.expand(packed)
        return decompress_weight(packed)

    def parts_device(self) -> torch.device:
        """Where the weight is."""
        if self.native is not None:
            return torch.device("cpu")
        return getattr(self, self.parts[0]).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (tokens, in)
        if self.native is not None and flat.shape[0] <= self.cpu_kernel_max_tokens(flat.dtype):
            return self._cpu_kernel(x, flat)
        if self._kernel_for(flat):
            from . import kernels

            y = kernels.compressed_matmul(flat, self.packed)  # (tokens, out)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        if self.native is not None:
            # Expanded for this call into a buffer kept across calls (the product takes it at
            # once); on x as given, as nn.Linear would do it: bit for bit the dense layer's result.
            # With int8 activations, on x rounded as the kernel rounds it (in x's dtype).
            from . import cpu_kernels

            if self.int8_activations:
                x = cpu_kernels.int8_rounded(x).to(x.dtype)
            return F.linear(x, cpu_kernels.expand_for_call(self.native).to(x.dtype), self.bias)
        if x.device.type != "cpu" or flat.shape[0] > 1:
            # Expanded for this call only (freed on return), as above.
            return F.linear(x, self.dense_weight().to(x.dtype), self.bias)
        # One token on a CPU without the native kernels: expanded a band of rows at a time, each
        # band staying in cache from its expansion to its product (faster than expanding the
        # whole layer: see bench/README.md, section "Deploy"), the layer never dense in memory.
        # A product with one token is a dot product per output, the same whatever the band: bit
        # for bit the dense result. (With more tokens the matrix product's blocking depends on
        # the band, so prefill expands the whole layer.)
        out = x.new_empty(*x.shape[:-1], self.out_features)
        band = max(CPU_BAND_ELEMENTS // self.in_features, 16)
        packed = self.packed
        for start in range(0, self.out_features, band):
            stop = min(start + band, self.out_features)
            weight = decompress_weight(slice_rows(packed, start, stop)).to(x.dtype)  # (band, in)
            bias = self.bias[start:stop] if self.bias is not None else None
            out[..., start:stop] = F.linear(x, weight, bias)
        return out

    def use_int8_activations(self, max_tokens: int) -> None:
        """Round the activations to int8 blocks in every product (runtime/int8_activations.py),
        the kernel's calls up to `max_tokens` tokens (its own limit), an expanded product's above."""
        if self.native is None:
            raise RuntimeError("int8 activations need the layer repacked for the native CPU kernels")
        self.int8_activations = True
        self.native.int8_activations = True
        self._cpu_limits = {dtype: max_tokens for dtype in self._cpu_limits}

    def cpu_kernel_max_tokens(self, dtype: torch.dtype) -> int:
        """Tokens per call up to which the native kernel takes activations of `dtype` (0 when the
        layer is not repacked for it); a float16 model's activations go through float32."""
        return self._cpu_limits.get(dtype, self._cpu_limits.get(torch.float32, 0))

    def native_for(self, dtype: torch.dtype, tokens: int) -> NativeWeight | None:
        """The native weight a CPU call of `tokens` tokens in `dtype` runs on (None: expanded)."""
        return self.native if self.native is not None and tokens <= self.cpu_kernel_max_tokens(dtype) else None

    def _cpu_kernel(self, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """The native kernel: activations in float32 or bfloat16 (a float16 model's go through
        float32; the kernel sums in float32 either way), the bias added after."""
        from . import cpu_kernels

        if flat.dtype not in (torch.float32, torch.bfloat16):
            flat = flat.float()
        y = cpu_kernels.matmul(flat, self.native)  # (tokens, out)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _kernel_for(self, flat: torch.Tensor) -> bool:
        """Whether a GPU kernel takes this call."""
        if self.use_kernels is False or flat.device.type != "cuda" or flat.shape[0] > KERNEL_MAX_TOKENS:
            return False
        from . import kernels

        return kernels.available() and flat.dtype == _dtype(self.spec) and kernels.supports(self.spec, flat.shape[0])

    def path(self) -> str:
        """How calls of up to KERNEL_MAX_TOKENS tokens run: "cpu kernel", "gpu kernel" or
        "expanded per call" (larger calls are always expanded per call)."""
        if self.native is not None:
            return "cpu kernel"
        if self.use_kernels is not False and self.parts_device().type == "cuda":
            from . import kernels

            if kernels.available() and kernels.supports(self.spec, 1):
                return "gpu kernel"
        return "expanded per call"

    def kind(self) -> str:
        """The layer's layout in words: "nm 2:4 4-bit g128", "bitmask bfloat16", ..."""
        spec = self.spec
        pattern = f" {spec.n}:{spec.m}" if spec.layout == "nm" else ""
        if spec.quantized:
            groups = f"g{spec.group_size}" if spec.group_size else "per row"
            return f"{spec.layout}{pattern} {spec.bits}-bit {groups}"
        return f"{spec.layout}{pattern} {spec.dtype}"

    def extra_repr(self) -> str:
        native = ", cpu kernel" if self.native is not None else ""
        native += ", int8 activations" if self.int8_activations else ""
        return f"in={self.in_features}, out={self.out_features}, {self.kind()}{native}"


def _dtype(spec: LayerSpec) -> torch.dtype:
    from prunellm.formats.compressed.layer import DTYPES

    return DTYPES[spec.dtype]

"""Dense layers on the native CPU kernels at decode.

torch's one-token product with a bfloat16 or float16 weight streams well below what this
CPU's memory gives (bench/README.md, "A whole model on the CPU kernels": SmolLM2's dense decode
spent most of a step in it); the native kernels read the same weight in place at decode
(`cpu_kernels.prepare_dense`, no copy) and leave larger calls (prefill) to torch. The output
head and the embeddings' tied weight are layers like the others here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import cpu_kernels, token_limits

# float32 stays with torch: its one-token product (MKL's) already streams float32 at memory
# speed, and the kernels would read the same four bytes a weight.
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


class DecodeLinear(nn.Linear):
    """An nn.Linear whose calls of few tokens (runtime/token_limits.py, by the activations'
    dtype) go through the native kernel reading its own weight. Holds the layer's Parameters
    themselves: tied weights stay tied, and the state dict is the layer's."""

    def __init__(self, linear: nn.Linear, native: cpu_kernels.NativeWeight) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.native = native
        self._storage = linear.weight.data_ptr()
        self._limits = token_limits.limits(None, cpu_kernels.isa())

    def native_for(self, dtype: torch.dtype, tokens: int) -> cpu_kernels.NativeWeight | None:
        """The native weight a call of `tokens` tokens in `dtype` runs on (None: torch's product)."""
        if tokens > self._limits.get(dtype, 0) or self.weight.data_ptr() != self._storage:
            return None
        return self.native

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (tokens, in)
        # The kernel reads the weight's memory as it was at load: a weight moved or cast since
        # (model.to(...)) takes torch's path.
        if x.dtype not in self._limits or flat.shape[0] > self._limits[x.dtype] \
                or self.weight.data_ptr() != self._storage or torch.is_grad_enabled() and x.requires_grad:
            return F.linear(x, self.weight, self.bias)
        y = cpu_kernels.matmul(flat, self.native)  # (tokens, out), x's dtype
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def use_kernels_for_dense(model: nn.Module) -> int:
    """Swap every dense bfloat16/float16 nn.Linear on the CPU that the kernels read in place for
    a DecodeLinear; returns how many. Without the native library, nothing changes."""
    if not cpu_kernels.available():
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.dtype not in KERNEL_DTYPES:
                continue
            native = cpu_kernels.prepare_dense(child.weight.detach())
            if native is not None:
                setattr(parent, name, DecodeLinear(child, native))
                swapped += 1
    return swapped

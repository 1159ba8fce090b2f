"""What every solver returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gguf_grids import GGUFBlocks
from .quant import QuantGrid


@dataclass
class SolveResult:
    """A compressed layer.

    weight: (R, C) float32, the new weight (zeros where pruned, on the grid if quantized).
    mask: (R, C) bool, True where the weight was pruned (forced to zero).
    grid: the quantization grid the weight lies on (min-max or a GGUF block format), or None.
    damp_frac: damping finally used (raised above the request if H was not positive definite).
    damp_retries: how many times damping was raised (0 when it was not).
    hessian_shrink: the Hessian shrinkage GPTQ chose for the layer ("auto"), else None.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    grid: QuantGrid | GGUFBlocks | None = None
    damp_frac: float | None = None
    damp_retries: int = 0
    hessian_shrink: float | None = None

    @property
    def sparsity(self) -> float:
        return float((self.weight == 0).float().mean())

"""Uniform min-max quantization grids, per output row or per group of inputs.

The grid of GPTQ's and SparseGPT's code: integer levels 0..2^bits-1, a scale and an integer
zero point per row (or per row and group). Zero is always on the grid (the range is widened
to include 0 and the zero point is an integer), so pruned weights stay exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fit_minmax(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of w (R, K) covering [min(w, 0), max(w, 0)]: two (R,) tensors."""
    maxq = 2**bits - 1
    zeros = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    wmin = torch.minimum(w.min(dim=1).values, zeros)
    wmax = torch.maximum(w.max(dim=1).values, zeros)
    if sym:
        wmax = torch.maximum(wmin.abs(), wmax)
        wmin = torch.where(wmin < 0, -wmax, wmin)
    empty = (wmin == 0) & (wmax == 0)
    # An all-zero row still needs a valid grid: any scale reproduces zeros exactly.
    wmin = torch.where(empty, -torch.ones_like(wmin), wmin)
    wmax = torch.where(empty, torch.ones_like(wmax), wmax)
    scale = (wmax - wmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-wmin / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round w onto the grid and return the dequantized values (same shape as w)."""
    maxq = 2**bits - 1
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return scale * (q - zero)


@dataclass
class QuantGrid:
    """The grid a quantized layer ended on: what an exporter packs.

    scale, zero: (R, G) with G = 1 per row or C / group_size groups; integer levels are
    round(w / scale) + zero in [0, 2^bits - 1].
    """

    bits: int
    sym: bool
    group_size: int | None
    scale: torch.Tensor
    zero: torch.Tensor

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer levels (R, C) of a weight already on this grid."""
        scale, zero = self.expand(weight.shape[1])
        return torch.clamp(torch.round(weight / scale) + zero, 0, 2**self.bits - 1).to(torch.uint8)

    def expand(self, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-weight (R, C) scale and zero point."""
        repeat = cols if self.group_size is None else self.group_size
        return self.scale.repeat_interleave(repeat, dim=1), self.zero.repeat_interleave(repeat, dim=1)

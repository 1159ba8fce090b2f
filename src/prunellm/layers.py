"""A linear layer's weight as (out_features, in_features), whatever its storage layout.

nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out). Every package reads and writes
weights through these helpers, so none needs to know which layer class it holds.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def in_features(layer: nn.Module) -> int:
    """Input width of a linear layer, whatever its storage layout."""
    return layer.weight.shape[0] if isinstance(layer, Conv1D) else layer.weight.shape[1]


def weight_view(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as (out_features, in_features), in its own dtype: a view, no copy."""
    weight = layer.weight.detach()
    return weight.t() if isinstance(layer, Conv1D) else weight  # Conv1D stores (in, out)


def read_weight(layer: nn.Module) -> torch.Tensor:
    """(out_features, in_features) float32 copy, whatever the layer's storage layout."""
    return weight_view(layer).to(torch.float32, copy=True)


def write_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store an (out, in) weight back in the layer's own layout and dtype."""
    if isinstance(layer, Conv1D):
        weight = weight.t()
    layer.weight.data.copy_(weight.to(device=layer.weight.device, dtype=layer.weight.dtype))

"""Per-layer sparsity targets from a dense calibration pass (OWL), for any pruning method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import PrunellmError
from ..solvers import HessianAccumulator, outlier_ratio, owl_sparsities, wanda_scores
from .blockwalk import walk_blocks
from ..layers import in_features, read_weight
from .discovery import find_linear_layers

if TYPE_CHECKING:
    from ..distributed import Group

UNITS = ("block", "layer")


@dataclass
class AllocationConfig:
    """kind: "uniform" (every layer at the target) or "owl". owl_lambda: spread λ of the
    sparsities around the target; owl_threshold: OWL's M, outliers are scores above M × mean;
    unit: one ratio per "block" (the paper) or per "layer" (attention and MLP layers apart)."""

    kind: str = "uniform"
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    unit: str = "block"

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "owl"):
            raise PrunellmError(f"unknown allocation {self.kind!r}; choose uniform or owl")
        if self.unit not in UNITS:
            raise PrunellmError(f"allocation unit must be one of {', '.join(UNITS)}, got {self.unit!r}")


def collect_input_norms(model: nn.Module, calibration: torch.Tensor, *, device: torch.device, batch_size: int = 1,
                        include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                        dist: Group | None = None) -> dict[str, torch.Tensor]:
    """diag(H) (squared input norms, (in,)) of every selected linear layer, from one dense pass.

    Hooks ride on the walk's own forward that produces each block's outputs: one block
    forward per block, nothing is run twice. Under `dist`, summed over every process's share.
    """
    norms: dict[str, torch.Tensor] = {}
    finish: Callable[[], None] | None = None
    for step in walk_blocks(model, calibration, device=device, batch_size=batch_size):
        if finish is not None:
            finish()
        finish = _hook_diagonals(find_linear_layers(step.block, step.name, include, exclude), device, norms, dist)
    if finish is not None:
        finish()
    return norms


def _hook_diagonals(layers: dict[str, nn.Module], device: torch.device, out: dict[str, torch.Tensor],
                    dist: Group | None) -> Callable[[], None]:
    accumulators = {}
    handles = []
    for name, layer in layers.items():
        accumulators[name] = HessianAccumulator(in_features(layer), device=device, diag_only=True)
        handles.append(layer.register_forward_pre_hook(lambda m, inputs, acc=accumulators[name]: acc.add(inputs[0])))

    def finish() -> None:
        for handle in handles:
            handle.remove()
        if dist is not None:
            dist.reduce_statistics(list(accumulators.values()))
        out.update({name: acc.diag.cpu() for name, acc in accumulators.items() if acc.num_tokens})

    return finish


def owl_allocation(model: nn.Module, norms: dict[str, torch.Tensor], sparsity: float, config: AllocationConfig) -> dict[str, float]:
    """Layer name -> sparsity, with the size-weighted mean equal to `sparsity`."""
    units: dict[str, list[str]] = {}
    for name in norms:
        units.setdefault(_block_of(name) if config.unit == "block" else name, []).append(name)
    ratios, sizes = [], []
    for names in units.values():
        scores = [wanda_scores(read_weight(model.get_submodule(n)), norms[n]) for n in names]
        ratios.append(outlier_ratio(scores, config.owl_threshold))
        sizes.append(sum(s.numel() for s in scores))
    targets = owl_sparsities(ratios, sparsity, config.owl_lambda, sizes)
    return {name: target for names, target in zip(units.values(), targets) for name in names}


def _block_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'model.layers.3': the first numbered path component."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name

"""Find the decoder blocks of any causal LM and the linear layers inside them.

No per-architecture tables: the blocks are the ModuleList whose children are of a class
that Hugging Face names in `_no_split_modules` (the unit it never splits across devices),
with "the longest ModuleList of one repeated class" as the fallback.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import PrunellmError


@dataclass
class Blocks:
    path: str  # e.g. "model.layers"
    modules: nn.ModuleList

    def __len__(self) -> int:
        return len(self.modules)

    def name(self, index: int) -> str:
        return f"{self.path}.{index}"


def find_blocks(model: nn.Module) -> Blocks:
    """The decoder blocks of `model`, in execution order."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    candidates: list[tuple[int, str, nn.ModuleList]] = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child).__name__ for child in module}
        if len(classes) != 1:
            continue
        preferred = 1 if classes & no_split else 0
        candidates.append((preferred, len(module), path, module))
    if not candidates:
        raise PrunellmError(f"cannot find decoder blocks in {type(model).__name__}: no list of repeated modules")
    _, _, path, modules = max(candidates, key=lambda c: (c[0], c[1]))
    return Blocks(path, modules)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _matches(name: str, short: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in patterns)


def find_linear_layers(
    block: nn.Module, prefix: str, include: list[str] | tuple[str, ...] = (), exclude: list[str] | tuple[str, ...] = ()
) -> dict[str, nn.Module]:
    """Linear layers (nn.Linear, GPT-2's Conv1D) of a block, by full name, in definition order.

    include/exclude: shell patterns tested against the full name ("model.layers.3.mlp.down_proj")
    and the name inside the block ("mlp.down_proj"); include empty = all.
    """
    layers = {}
    for short, module in block.named_modules():
        if not short or not is_linear(module):
            continue
        name = f"{prefix}.{short}"
        if include and not _matches(name, short, include):
            continue
        if exclude and _matches(name, short, exclude):
            continue
        layers[name] = module
    return layers



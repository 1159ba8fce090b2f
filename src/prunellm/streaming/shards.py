"""Write a checkpoint one shard at a time: one shard per unit of work, each complete or absent.

A streamed prune writes the embeddings, each decoder block and the head as soon as they are
final, so no more than one of them is ever held in memory. Each shard goes to a hidden
temporary name, is flushed to disk and renamed: a crash leaves a shard whole or not there.
The index (`model.safetensors.index.json`) is what `from_pretrained` reads to find them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from prunellm.io.atomic import atomic_path, write_text_atomic
from prunellm.io.lazy import INDEX_FILE


def block_unit(index: int) -> str:
    """The shard unit of decoder block `index`."""
    return f"block.{index}"


@dataclass
class ShardPlan:
    """units: the shards in file order, by unit name ("embeddings", "block.3", "head");
    keys: each unit's tensor names."""

    units: list[str]
    keys: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.units)

    def file(self, unit: str) -> str:
        return f"model-{self.units.index(unit) + 1:05d}-of-{len(self.units):05d}.safetensors"

    def weight_map(self) -> dict[str, str]:
        return {name: self.file(unit) for unit in self.units for name in self.keys[unit]}


def write_shard(directory: Path, file: str, tensors: dict[str, torch.Tensor]) -> int:
    """Write `tensors` as `directory/file`, atomically and durably; returns the tensor bytes."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(directory / file) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_index(directory: Path, plan: ShardPlan, total_size: int, total_parameters: int) -> None:
    """The index `from_pretrained` follows, as transformers writes it."""
    index = {"metadata": {"total_parameters": total_parameters, "total_size": total_size},
             "weight_map": plan.weight_map()}
    write_text_atomic(directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")

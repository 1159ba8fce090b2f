"""Walk a model block by block on calibration data, holding one block on the device at a time.

The skeleton of every calibration-based method: capture the first block's inputs, then for
each block: move it to the device, let the caller work on it (collect statistics, rewrite
weights), run it to produce the next block's inputs (from the *compressed* block, so that
later blocks learn to correct earlier errors), move it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .capture import BlockCall, capture_block_calls
from .discovery import Blocks, find_blocks


@dataclass
class BlockStep:
    """One block, ready to be worked on: `run(b)` is batch b through the block, on the device."""

    index: int
    name: str
    block: nn.Module
    inputs: list[torch.Tensor]  # per batch, (B, T, C)
    calls: dict[int, BlockCall]  # batch size -> how the block is called
    device: torch.device

    @property
    def num_batches(self) -> int:
        return len(self.inputs)

    def run(self, batch: int) -> torch.Tensor:
        hidden = self.inputs[batch].to(self.device)
        return self.calls[hidden.shape[0]](self.block, hidden)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def walk_blocks(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 1,
    offload_activations: bool = False,
    blocks: Blocks | None = None,
    forward_kwargs: dict | None = None,
) -> Iterator[BlockStep]:
    """Yield every decoder block with its calibration inputs, in order.

    calibration: (N, T) token ids. After the caller's work on a step, the block's outputs
    become the next step's inputs. Activations live on the device unless `offload_activations`.
    """
    blocks = blocks or find_blocks(model)
    storage = torch.device("cpu") if offload_activations else device
    inputs: list[torch.Tensor] = []
    calls_by_size: dict[int, list[BlockCall]] = {}
    for batch in calibration.split(batch_size):
        batch = batch.to(_embedding_device(model))
        hidden, calls = capture_block_calls(model, blocks, batch, forward_kwargs)
        inputs.append(hidden.to(storage))
        calls_by_size.setdefault(batch.shape[0], calls)

    for index, block in enumerate(blocks.modules):
        home = _device_of(block)
        block.to(device)
        step = BlockStep(index, blocks.name(index), block, inputs,
                         {size: calls[index].to(device) for size, calls in calls_by_size.items()}, device)
        try:
            yield step
            with torch.no_grad():
                inputs = [step.run(b).to(storage) for b in range(step.num_batches)]
        finally:
            block.to(home)


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _embedding_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return _device_of(embeddings) if embeddings is not None else _device_of(model)

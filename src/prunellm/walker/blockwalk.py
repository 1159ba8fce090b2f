"""Walk a model block by block on calibration data, holding one block on the device at a time.

The skeleton of every calibration-based method: capture the first block's inputs, then for
each block: move it to the device, let the caller work on it (collect statistics, rewrite
weights), run it to produce the next block's inputs (from the *compressed* block, so that
later blocks learn to correct earlier errors), move it back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
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
    autocast: torch.dtype | None = None  # run the block's products in this dtype (weights stay as they are)

    @property
    def num_batches(self) -> int:
        return len(self.inputs)

    def run(self, batch: int) -> torch.Tensor:
        hidden = self.inputs[batch].to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            return self.calls[hidden.shape[0]](self.block, hidden)


class BlockHost:
    """Where blocks live between steps. This one: the whole model in memory, one block moved to
    the device for its step and back after; while a block is worked on, the next one is copied
    to a GPU in a background thread (`prefetch`). A streaming host (prunellm.streaming.host)
    instead reads each block from disk on `enter` and writes it out on `leave`."""

    def __init__(self) -> None:
        self._homes: dict[int, torch.device] = {}
        self._prefetching: dict[int, threading.Thread] = {}

    def capturing(self) -> AbstractContextManager:
        """Held while the blocks' calls are captured (embeddings and block 0 must be usable)."""
        return nullcontext()

    def prefetch(self, index: int, block: nn.Module, device: torch.device) -> None:
        """Start moving block `index` (the next one) to a CUDA device while the current block is
        solved: the copy overlaps the solve instead of stalling the next step. A no-op elsewhere,
        and for a block already there. The device then holds two blocks, whatever the depth."""
        home = _device_of(block)
        if device.type != "cuda" or home == device or index in self._prefetching:
            return
        self._homes[index] = home

        def copy() -> None:
            # A stream of its own, so that the copy runs beside the solve's kernels; the thread
            # waits for its stream only. The block's tensors are freed later (moved back home) by
            # a blocking copy on the main stream, after every use of them there has finished.
            stream = torch.cuda.Stream(device)
            with torch.cuda.stream(stream):
                block.to(device)
            stream.synchronize()

        thread = threading.Thread(target=copy, name=f"prefetch-block-{index}", daemon=True)
        self._prefetching[index] = thread
        thread.start()

    def enter(self, index: int, block: nn.Module, device: torch.device) -> None:
        thread = self._prefetching.pop(index, None)
        if thread is not None:
            thread.join()  # the copy started during the previous step
        else:
            self._homes[index] = _device_of(block)
        block.to(device)  # a no-op after a finished prefetch

    def statistics_pass(self, index: int, layers: dict[str, nn.Module]) -> AbstractContextManager:
        """Held while block `index`'s statistics are collected, before any of `layers` is solved.
        A host may park the layers for the pass and give each its weight for its own calls only;
        they leave it parked. Here they stay in memory."""
        return nullcontext()

    def park(self, index: int, layers: dict[str, nn.Module], *, after_statistics: bool = False) -> None:
        """These layers wait, unchanged, for their solves (after_statistics: the block's statistics
        pass has just ended) or during one: a host may take their weights out of memory until
        `unpark`. Here they stay."""

    def backed_up(self, hessian: torch.Tensor) -> AbstractContextManager[Callable[[torch.Tensor], None] | None]:
        """Held through the solve that is `hessian`'s last use. A host that can keep a copy of it
        outside memory yields a function that fills a tensor with its values: the solve may then
        overwrite it (its inverse computed in the same storage). Here: None, nothing is lent."""
        return nullcontext()

    def unpark(self, index: int, name: str, layer: nn.Module) -> None:
        """Layer `name` (parked) is about to be solved, or to receive another process's solution."""

    def leave(self, index: int, block: nn.Module, outputs: list[torch.Tensor] | None) -> None:
        """The step is over; `outputs` are the next block's inputs (None when the walk stops here)."""
        self.abandon(index, block)

    def abandon(self, index: int, block: nn.Module) -> None:
        """The walk ended during the step (an error, or the caller stopped early)."""
        block.to(self._homes.pop(index, torch.device("cpu")))

    def cancel_prefetch(self, blocks: Blocks) -> None:
        """Put back a block prefetched for a step that will not come (the walk ended early)."""
        for index, thread in list(self._prefetching.items()):
            thread.join()
            self.abandon(index, blocks.modules[index])
        self._prefetching.clear()


@dataclass
class ResumePoint:
    """Where an interrupted walk starts again: block `index`, with its checkpointed inputs."""

    index: int
    inputs: list[torch.Tensor]  # per batch, (B, T, C), this process's share


def walk_blocks(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 1,
    offload_activations: bool = False,
    blocks: Blocks | None = None,
    forward_kwargs: dict | None = None,
    host: BlockHost | None = None,
    resume: ResumePoint | None = None,
    stop: int | None = None,
    autocast: torch.dtype | None = None,
) -> Iterator[BlockStep]:
    """Yield every decoder block with its calibration inputs, in order.

    calibration: (N, T) token ids. After the caller's work on a step, the block's outputs
    become the next step's inputs. Activations live on the device unless `offload_activations`.
    host: where blocks live between steps (default: all in memory). resume: start at a later
    block with given inputs (the calls are captured again: they depend on the tokens alone).
    stop: the last block to visit; its outputs are not computed (without `stop`, every block's are).
    autocast: run the blocks' matrix products in this dtype (torch.autocast), e.g. bfloat16 on a CPU
    that has bf16 instructions; the weights, and what the caller writes into them, keep theirs.
    """
    blocks = blocks or find_blocks(model)
    host = host or BlockHost()
    storage = torch.device("cpu") if offload_activations else device
    inputs: list[torch.Tensor] = []
    calls_by_size: dict[int, list[BlockCall]] = {}
    with host.capturing():
        for batch in calibration.split(batch_size):
            batch = batch.to(_embedding_device(model))
            hidden, calls = capture_block_calls(model, blocks, batch, forward_kwargs)
            if resume is None:
                inputs.append(hidden.to(storage))
            calls_by_size.setdefault(batch.shape[0], calls)
    start = 0
    if resume is not None:
        start, inputs = resume.index, [hidden.to(storage) for hidden in resume.inputs]
    last = len(blocks) - 1 if stop is None else stop

    try:
        for index in range(start, last + 1):
            block = blocks.modules[index]
            host.enter(index, block, device)
            if index < last:
                host.prefetch(index + 1, blocks.modules[index + 1], device)
            step = BlockStep(index, blocks.name(index), block, inputs,
                             {size: calls[index].to(device) for size, calls in calls_by_size.items()}, device,
                             autocast)
            try:
                yield step
                outputs = None
                if stop is None or index < stop:  # callers may hook this forward (OWL's input norms)
                    with torch.no_grad():
                        outputs = [step.run(b).to(storage) for b in range(step.num_batches)]
            except BaseException:
                host.abandon(index, block)
                raise
            host.leave(index, block, outputs)
            if outputs is not None:
                inputs = outputs
    finally:  # an error, or a caller that stopped early (a generator closed mid-walk)
        host.cancel_prefetch(blocks)


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _embedding_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return _device_of(embeddings) if embeddings is not None else _device_of(model)

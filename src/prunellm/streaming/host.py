"""A block host for the walker that keeps only the block in work in memory.

On `enter`, the block's weights are read from the checkpoint (memory-mapped) onto the device;
on `leave`, the compressed block is written as its own shard, the next block's inputs are
checkpointed, the progress is committed, and the weights go back to the meta device. The
walker itself is unchanged: it sees an ordinary model whose blocks come and go.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..io.atomic import atomic_path
from ..io.grids import BLOCKS_FILE, GRIDS_FILE, load_gguf_blocks, load_quant_grids, save_gguf_blocks, save_quant_grids
from .heap import release_free_memory
from .resume import RunState, kill_point
from .shards import ShardPlan, block_unit, write_shard
from ..io.skeleton import Skeleton
from ..walker import BlockHost, find_linear_layers

if TYPE_CHECKING:
    from ..distributed import Group
    from ..walker import Blocks, WalkResult


class StreamingHost(BlockHost):
    """Blocks read from `skeleton`'s checkpoint on entry, written to `plan`'s shards on exit."""

    def __init__(self, skeleton: Skeleton, blocks: Blocks, plan: ShardPlan, state: RunState,
                 result: WalkResult, group: Group | None = None, save_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.save_dtype = save_dtype  # what the shards store (None: the model's dtype)
        self.skeleton = skeleton
        self.blocks = blocks
        self.plan = plan
        self.state = state
        self.result = result
        self.group = group
        self._device = torch.device("cpu")  # the current block's device (set on `enter`)
        self.rank = group.rank if group is not None else 0
        self.world = group.world if group is not None else 1

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Embeddings (everything outside the blocks but the untied head) on CPU, where the
        in-memory walk computes them too, and block 0 (the walker runs it once, on one token, to
        learn its output type; its linear layers are read for their calls only); all released
        afterwards."""
        first = self.blocks.name(0)
        linear = find_linear_layers(self.blocks.modules[0], first)
        loaded_per_call = {stored for name in linear for stored in self.skeleton.stored(name)}
        names = self.plan.keys["embeddings"] + [n for n in self.skeleton.stored(first) if n not in loaded_per_call]
        self.skeleton.materialize(names, "cpu")
        try:
            with self._loaded_per_call(linear, torch.device("cpu")):
                yield
        finally:
            self.skeleton.release("")

    def prefetch(self, index: int, block: nn.Module, device: torch.device) -> None:
        """Nothing: the next block is still on disk (reading it ahead would hold a second block
        in host memory, which streaming exists to avoid)."""

    def enter(self, index: int, block: nn.Module, device: torch.device) -> None:
        self._device = device  # where parked layers come back to
        self.skeleton.materialize(self.plan.keys[block_unit(index)], device)

    @contextmanager
    def statistics_pass(self, index: int, layers: dict[str, nn.Module]) -> Iterator[None]:
        """On a CPU, the block's linear layers are parked for the pass and each is read from the
        checkpoint for its own call only: the pass then holds the Hessians, the activations and one
        layer's weight (one (out, in) float32 matrix) where it held the whole block. The reads (page
        cache, float16 to float32) cost a small fraction of the pass (bench/README.md, "Reading a
        block from the checkpoint"). On a GPU the block sits in device memory: nothing changes."""
        if self._device.type != "cpu":
            yield
            return
        with self._loaded_per_call(layers, self._device):
            yield

    @contextmanager
    def _loaded_per_call(self, layers: dict[str, nn.Module], device: torch.device) -> Iterator[None]:
        """These layers parked, each read from the checkpoint onto `device` for its own calls."""
        handles = []
        for name, layer in layers.items():
            self.skeleton.release(name)
            stored = self.skeleton.stored(name)
            handles.append(layer.register_forward_pre_hook(
                lambda module, args, stored=stored: self.skeleton.materialize(stored, device)))
            handles.append(layer.register_forward_hook(
                lambda module, args, output, name=name: self.skeleton.release(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name in layers:  # a pass cut short inside a layer's call (an error) leaves it loaded
                self.skeleton.release(name)

    def park(self, index: int, layers: dict[str, nn.Module], *, after_statistics: bool = False) -> None:
        """Layers waiting for their solve, or in it (the solver works on a copy), wait in the
        checkpoint, not in memory: at LLaMA-7B width the widest layer's solve, the block's peak,
        then runs beside no weight of the block instead of the whole block in float32.
        Read again on `unpark`, they are the same values."""
        for name in layers:
            self.skeleton.release(name)
        if after_statistics:
            # The pass's freed activations sit in malloc's arenas: hand them back once, before the
            # solves (not per layer: a trim walks the whole heap, which takes time in a large process).
            release_free_memory()

    @contextmanager
    def backed_up(self, hessian: torch.Tensor) -> Iterator[Callable[[torch.Tensor], None] | None]:
        """On a CPU, a copy of the Hessian goes to a scratch file beside the run's state (the page
        cache, not this process's memory) and the solve may overwrite the Hessian itself: a
        down_proj's solve then holds its Hessian and the inverse factor in one (in, in) matrix, not
        two. The copy refills it for the layer's error (and a retry with more
        damping): one write and one read of the Hessian's size per lent solve."""
        if self._device.type != "cpu" or hessian.dtype != torch.float32 or not hessian.is_contiguous():
            yield None
            return
        path = self.state.root / f"hessian-backup-rank{self.rank}.bin"
        with open(path, "wb") as file:
            hessian.numpy().tofile(file)  # straight from the tensor's memory

        def restore(into: torch.Tensor) -> None:
            if into.shape != hessian.shape or into.dtype != hessian.dtype or not into.is_contiguous():
                raise ValueError(f"cannot restore a {tuple(hessian.shape)} Hessian into {tuple(into.shape)}")
            with open(path, "rb") as file:  # straight into the tensor's memory
                read = file.readinto(memoryview(into.numpy()).cast("B"))
            if read != into.numel() * into.element_size():
                raise OSError(f"{path} was cut short: {read} bytes")

        try:
            yield restore
        finally:
            path.unlink(missing_ok=True)

    def unpark(self, index: int, name: str, layer: nn.Module) -> None:
        self.skeleton.materialize(self.skeleton.stored(name), self._device)

    def leave(self, index: int, block: nn.Module, outputs: list[torch.Tensor] | None) -> None:
        unit = block_unit(index)
        main = self.rank == 0
        if main:
            if self.save_dtype is not None:
                self.skeleton.cast(self.plan.keys[unit], self.save_dtype)  # in place: no second copy of the block
            size = write_shard(self.state.staging, self.plan.file(unit), self._tensors(unit))
            self._save_grids(index)
            kill_point(f"shard:{index}")
        if outputs is not None:
            self.state.save_inputs(index + 1, self.rank, self.world, outputs)
        self._barrier()  # every process's inputs exist before the state names them
        if main:
            self.state.commit(written={**self.state.written, unit: size}, next_block=index + 1,
                              layers=[dataclasses.asdict(r) for r in self.result.layers])
            kill_point(f"block:{index}")
        self._barrier()  # committed: the inputs of this block are no longer needed by anyone
        self.state.drop_inputs(index, self.rank, self.world)
        self.skeleton.release(self.blocks.name(index))
        release_free_memory()  # else the freed block stays in malloc's arenas: RSS creeps up by ~a block each

    def abandon(self, index: int, block: nn.Module) -> None:
        self.skeleton.release(self.blocks.name(index))

    def copy_unit(self, unit: str) -> None:
        """Write a unit the run does not change (embeddings, head, blocks outside the range) straight
        from the checkpoint, in the save dtype, and commit it."""
        tensors = self.skeleton.read(self.plan.keys[unit], dtype=self.save_dtype)
        size = write_shard(self.state.staging, self.plan.file(unit), tensors)
        self.state.commit(written={**self.state.written, unit: size})

    def _tensors(self, unit: str) -> dict[str, torch.Tensor]:
        return {name: self.skeleton.tensor(name) for name in self.plan.keys[unit]}  # views, no copy on CPU

    def _save_grids(self, index: int) -> None:
        """GGUF and min-max grids of this block's layers, kept beside the state until the final
        merge: a directory written whole under a temporary name, then renamed."""
        names = [r.name for r in self.result.layers if r.block == index]
        gguf = {name: self.result.gguf_blocks[name] for name in names if name in self.result.gguf_blocks}
        minmax = {name: self.result.quant_grids[name] for name in names if name in self.result.quant_grids}
        if gguf or minmax:
            directory = self._grids_dir(index)
            shutil.rmtree(directory, ignore_errors=True)  # an attempt killed before committing this block
            with atomic_path(directory) as tmp:
                tmp.mkdir()
                if gguf:
                    save_gguf_blocks(tmp, gguf)
                if minmax:
                    save_quant_grids(tmp, minmax)

    def load_grids(self) -> tuple[dict, dict]:
        """The GGUF and min-max grids of the blocks a previous attempt committed."""
        gguf: dict = {}
        minmax: dict = {}
        for index in range(self.state.next_block):
            directory = self._grids_dir(index)
            if (directory / BLOCKS_FILE).is_file():
                gguf.update(load_gguf_blocks(directory))
            if (directory / GRIDS_FILE).is_file():
                minmax.update(load_quant_grids(directory))
        return gguf, minmax

    def _grids_dir(self, index: int) -> Path:
        return self.state.root / f"grids-{index:05d}"

    def _barrier(self) -> None:
        if self.group is not None:
            self.group.barrier()

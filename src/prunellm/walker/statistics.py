"""Input statistics of a block's linear layers, one Hessian per distinct input.

Layers that read the same tensor (q/k/v; gate/up; GPT-2 has none) share one Hessian. Which
layers share is learned by one forward of the block with hooks that compare input tensors,
which also gives the order the layers run in: the stages of true-sequential compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..solvers import HeldOut, HessianAccumulator


@dataclass
class InputGroup:
    """Layers fed by the same input tensor, in the order they run; `calls`: how many times the
    first of them runs in one pass of the block (more than once only for a reused layer)."""

    names: list[str]
    columns: int
    calls: int = 1


class _Stop(Exception):
    pass


def discover_input_groups(block: nn.Module, layers: dict[str, nn.Module], run: Callable[[], object]) -> list[InputGroup]:
    """Run the block once (`run`) and group its layers by shared input, in execution order."""
    order: list[tuple[str, tuple]] = []
    alive: list[torch.Tensor] = []  # keep inputs alive so that no address is reused mid-pass

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            alive.append(x)
            order.append((name, (x.data_ptr(), tuple(x.shape), tuple(x.stride()))))

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[tuple, InputGroup] = {}
    first_key: dict[str, tuple] = {}
    for name, key in order:
        if name in first_key:  # a layer called twice in one pass: grouped by its first input
            group = groups[first_key[name]]
            if group.names[0] == name:
                group.calls += 1
            continue
        first_key[name] = key
        if key not in groups:
            groups[key] = InputGroup([], key[1][-1])
        groups[key].names.append(name)
    return list(groups.values())


class StatisticsCollector:
    """Hooks that accumulate one Hessian per input group while the block runs.

    The forward is cut short once every group has seen all its inputs of the pass: what comes
    after the last of them (a LLaMA block's down_proj product and residual, a quarter of its
    linear work) does not change any statistic. `stop_early=False` runs every pass to the end.
    """

    def __init__(self, layers: dict[str, nn.Module], groups: list[InputGroup], *, device: torch.device,
                 diag_only: bool = False, stop_early: bool = True, held_out_every: int = 0) -> None:
        self.groups = groups
        self.accumulators = [HessianAccumulator(g.columns, device=device, diag_only=diag_only,
                                                held_out_every=held_out_every) for g in groups]
        self.stop_early = stop_early
        self._pending: dict[int, int] = {}  # group -> calls still to come in this pass
        # Before any other pre-hook: a pass cut short here runs nothing more of the layer (a host
        # that loads each layer's weight for its call then loads none for it).
        self._handles = [
            layers[group.names[0]].register_forward_pre_hook(self._hook(index), prepend=True)
            for index, group in enumerate(groups)
        ]

    def _hook(self, index: int) -> Callable:
        def accumulate(module: nn.Module, inputs: tuple) -> None:
            self.accumulators[index].add(inputs[0])
            left = self._pending.pop(index, 0) - 1
            if left > 0:
                self._pending[index] = left
            if self.stop_early and not self._pending:
                raise _Stop

        return accumulate

    def run(self, forward: Callable[[], object]) -> None:
        """One calibration batch through the block."""
        self._pending = {index: group.calls for index, group in enumerate(self.groups)}
        try:
            with torch.no_grad():
                forward()
        except _Stop:
            pass

    def hessians(self) -> dict[str, torch.Tensor]:
        """Layer name -> its (shared) Hessian."""
        return {name: acc.H for group, acc in zip(self.groups, self.accumulators) for name in group.names}

    def held_out(self) -> dict[str, HeldOut | None]:
        """Layer name -> the Hessian of its held-out windows (held_out_every); None where there
        are none, or nothing but them (fewer than 2 calibration windows)."""
        out: dict[str, HeldOut | None] = {}
        for group, acc in zip(self.groups, self.accumulators):
            held = acc.held_out
            usable = held is not None and 0 < held.num_tokens < acc.num_tokens
            part = HeldOut(held.H, held.num_tokens / acc.num_tokens) if usable else None
            out.update({name: part for name in group.names})
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

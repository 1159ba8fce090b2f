"""Capture what each decoder block is called with, without running the blocks.

Every argument but the hidden states (attention masks, rotary `position_embeddings`,
position ids, ...) is computed by the model before its block loop, and may differ per block
(Gemma-3 gives sliding-window and full-attention blocks different masks and rotary tables).
So one forward pass with every block replaced by a pass-through that records its call sees
them all, for the cost of the embeddings: no block runs, and the head never runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .discovery import Blocks


@dataclass
class BlockCall:
    """How one block is called, minus the hidden states: block(hidden, *args, **kwargs)."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_keyword: bool = False  # hidden states passed as `hidden_states=` rather than first
    returns_tuple: bool = False  # the block returns (hidden, ...) rather than a tensor

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_keyword:
            out = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def to(self, device: torch.device | str) -> "BlockCall":
        return BlockCall(_to_device(self.args, device), _to_device(self.kwargs, device), self.hidden_keyword,
                         self.returns_tuple)


class _StopForward(Exception):
    """Raised after the last block has been recorded: nothing after it needs to run."""


def _to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    kwargs = dict(kwargs)
    if args:
        return args[0], BlockCall(tuple(args[1:]), kwargs)
    return kwargs.pop("hidden_states"), BlockCall((), kwargs, hidden_keyword=True)


def capture_block_calls(
    model: nn.Module, blocks: Blocks, input_ids: torch.Tensor, forward_kwargs: dict | None = None
) -> tuple[torch.Tensor, list[BlockCall]]:
    """Run `model` on input_ids (B, T) with its blocks bypassed.

    Returns the first block's input hidden states (B, T, C) and, for every block, how it is
    called. Where the model is (CPU or not) is left as it is: only embeddings compute here.
    """
    calls: list[BlockCall | None] = [None] * len(blocks)
    first_hidden: list[torch.Tensor] = []
    returns_tuple = _probe_returns_tuple(model, blocks, input_ids, forward_kwargs)

    def bypass(index: int) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden, call = _split_hidden(args, kwargs)
            call.returns_tuple = returns_tuple
            calls[index] = call
            if index == 0:
                first_hidden.append(hidden)
            if index == len(blocks) - 1:
                raise _StopForward
            return (hidden,) if returns_tuple else hidden

        return forward

    # A block may already carry an instance-level forward (accelerate's device hooks): keep it.
    saved = [block.__dict__.get("forward") for block in blocks.modules]
    for index, block in enumerate(blocks.modules):
        block.forward = bypass(index)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False, **(forward_kwargs or {}))
    except _StopForward:
        pass
    finally:
        for block, forward in zip(blocks.modules, saved):
            if forward is None:
                del block.forward  # back to the class's forward
            else:
                block.forward = forward
    missing = [i for i, call in enumerate(calls) if call is None]
    if missing or not first_hidden:
        raise RuntimeError(f"blocks {missing} were not called by the model's forward")
    return first_hidden[0], calls  # type: ignore[return-value]


def _probe_returns_tuple(model: nn.Module, blocks: Blocks, input_ids: torch.Tensor, forward_kwargs: dict | None) -> bool:
    """Whether blocks return a tuple: learned by running block 0 once on a one-token input."""
    seen: list[Any] = []

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        seen.append(output)
        raise _StopForward

    handle = blocks.modules[0].register_forward_hook(record)
    try:
        with torch.no_grad():
            model(input_ids=input_ids[:1, :1], use_cache=False, **(forward_kwargs or {}))
    except _StopForward:
        pass
    finally:
        handle.remove()
    return bool(seen) and isinstance(seen[0], (tuple, list))

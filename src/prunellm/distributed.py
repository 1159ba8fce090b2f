"""Several processes (`torchrun --nproc-per-node N`): who calibrates on what, who solves what.

The split follows the shape of the work. Calibration samples are independent, so each rank
runs its own share of the windows through the block and accumulates Hessians on it; the
Hessians are then summed across ranks (weighted by token counts, so the result is the
single-process Hessian up to float rounding). Solving is per layer, so the layers of a
stage are shared out by estimated cost, each solved on one rank, and their new weights
broadcast to every rank: all ranks then hold the same compressed block and run their share
of the windows through it for the next block. NCCL on GPUs, Gloo on CPU.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .devices import resolve_device
from .errors import PrunellmError
from .solvers import HessianAccumulator

log = logging.getLogger(__name__)

TIMEOUT_ENV = "PRUNELLM_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 180.0


@dataclass
class Group:
    """This process's place in a run of `world` processes."""

    rank: int
    world: int
    device: torch.device  # where this rank computes: cuda:LOCAL_RANK under NCCL, else cpu

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, windows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the calibration windows: (N, T) -> (N_r, T)."""
        if windows.shape[0] < self.world:
            raise PrunellmError(f"{windows.shape[0]} calibration samples cannot be shared by {self.world} processes")
        return windows.tensor_split(self.world)[self.rank]

    def reduce_statistics(self, accumulators: list[HessianAccumulator]) -> None:
        """Every rank's accumulators become the ones over all ranks' tokens (in place), their
        held-out parts too."""
        held = [acc.held_out for acc in accumulators if acc.held_out is not None]
        for acc in [*accumulators, *held]:
            count = torch.tensor([float(acc.num_tokens)], dtype=torch.float64, device=acc.H.device)
            dist.all_reduce(count)
            total = acc.H.mul_(acc.num_tokens)  # each H is a mean over its own tokens: sum, then divide
            dist.all_reduce(total)
            tokens = int(count.item())
            if tokens:
                total.div_(tokens)
            acc.num_tokens = tokens

    def owners(self, costs: list[float]) -> list[int]:
        """The rank that solves each item: longest first, each to the least loaded rank.

        Deterministic (ties go to the lowest rank), so every rank computes the same answer.
        """
        load = [0.0] * self.world
        owner = [0] * len(costs)
        for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            rank = min(range(self.world), key=lambda r: (load[r], r))
            owner[index] = rank
            load[rank] += costs[index]
        return owner

    def broadcast_(self, tensor: torch.Tensor, src: int) -> None:
        """Overwrite `tensor` on every rank with rank `src`'s (same shape and dtype everywhere)."""
        if tensor.is_contiguous():
            dist.broadcast(tensor, src)
            return
        buffer = tensor.contiguous()
        dist.broadcast(buffer, src)
        tensor.copy_(buffer)

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable; small), in rank order."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def leave(self) -> None:
        """The end of a run that succeeded everywhere: wait until every rank is done (the first
        saves and evaluates last), then take the group down together. A rank that tore its group
        down while another still used it aborted at exit, rarely (Gloo's threads); a rank that
        fails never gets here, and torchrun stops the rest."""
        dist.barrier()
        _shutdown()


def solve_cost(rows: int, columns: int) -> float:
    """Rough solver time of an (rows, columns) layer: the inverse Hessian plus the row sweep."""
    return float(columns) ** 3 + float(rows) * float(columns) ** 2


def init_from_env(device: str | None = None) -> Group | None:
    """Join the process group torchrun describes in the environment; None for a single process.

    device: the --device option; CUDA (asked for, or by default when present) means NCCL with
    one GPU per local rank, anything else Gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    timeout = collective_timeout()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    kind = resolve_device(device).type
    if kind == "cuda":
        if torch.cuda.device_count() <= local:
            raise PrunellmError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)")
        target = torch.device("cuda", local)  # one GPU per process, whatever index --device named
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        target = torch.device(kind)
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout, device_id=target if backend == "nccl" else None)
    atexit.register(_shutdown)  # ranks may finish at different times (rank 0 saves): each leaves on its own
    log.info("rank %d of %d on %s (%s)", rank, world, target, backend)
    return Group(rank, world, target)


def collective_timeout() -> datetime.timedelta:
    """How long a process waits at a collective: $PRUNELLM_DIST_TIMEOUT_MIN minutes (default 180;
    the first process may evaluate perplexity alone while the others wait at the next one)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text.strip():
        return datetime.timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes <= 0:
        raise PrunellmError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {text!r}")
    return datetime.timedelta(minutes=minutes)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

"""Compress every selected linear layer of a model, block by block, with one method."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..distributed import Group, solve_cost
from ..errors import PrunellmError
from ..methods import Method
from ..solvers import HeldOut, relative_layer_error
from ..solvers.gguf_grids import GGUFBlocks
from ..solvers.quant import QuantGrid
from .blockwalk import BlockHost, BlockStep, ResumePoint, walk_blocks
from ..layers import in_features, read_weight, weight_view, write_weight
from .discovery import Blocks, find_blocks, find_linear_layers
from .forward_dtype import FORWARD_CHOICES, autocast_dtype, resolve_forward_dtype
from .statistics import InputGroup, StatisticsCollector, discover_input_groups

log = logging.getLogger(__name__)


@dataclass
class WalkConfig:
    """device: where the current block runs (None = CUDA if present). true_sequential: compress
    the layers of a block stage by stage (q/k/v, then o, ...), each stage calibrated on the
    outputs of the stages already compressed. include/exclude: shell patterns on layer names.
    first_block/last_block: the range of blocks to compress (inclusive; None = to the end).
    batch_size: calibration samples per block forward. offload_activations: keep calibration
    activations in CPU memory. layer_errors: report tr((W-Ŵ)H(W-Ŵ)ᵀ)/tr(WHWᵀ) per layer
    (needs the full Hessian even for methods that do not). forward_dtype: the dtype of the
    calibration forwards' matrix products (torch.autocast; weights, Hessians and solves stay in
    the model's dtype). "auto": bfloat16 on a CPU with bf16 instructions (faster forwards,
    perplexity within noise: bench/README.md), else the model's dtype (walker/forward_dtype.py);
    "float32" turns that off; None (older recipes) is the model's dtype."""

    device: str | None = None
    true_sequential: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    first_block: int = 0
    last_block: int | None = None
    batch_size: int = 1
    offload_activations: bool = False
    layer_errors: bool = True
    progress: bool = True
    forward_dtype: str | None = "auto"

    def __post_init__(self) -> None:
        if self.forward_dtype is not None and self.forward_dtype not in FORWARD_CHOICES:
            raise PrunellmError(f"forward dtype must be one of {', '.join(FORWARD_CHOICES)}, "
                                f"got {self.forward_dtype!r}")


@dataclass
class LayerRecord:
    name: str
    block: int
    shape: tuple[int, int]  # (out_features, in_features)
    sparsity: float
    relative_error: float | None
    seconds: float
    damp_frac: float | None = None
    hessian_shrink: float | None = None  # the shrinkage GPTQ chose for the layer ("auto"), else None


@dataclass
class WalkResult:
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)  # per-layer sparsity of an allocation
    gguf_blocks: dict[str, GGUFBlocks] = field(default_factory=dict)  # layers left on a GGUF grid
    quant_grids: dict[str, QuantGrid] = field(default_factory=dict)  # layers left on a min-max grid
    forward_dtype: str | None = None  # what the calibration forwards ran in ("auto" resolved)

    def sparsity(self) -> float:
        """Fraction of zeros over all compressed layers, weighted by their sizes (0 when none)."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers)
        return zeros / total if total else 0.0


def check_walk_range(blocks: Blocks, config: WalkConfig) -> range:
    """The blocks a walk with `config` compresses; refuses, before any work, a range outside
    the model (or empty) and a batch size below one."""
    last = len(blocks) - 1 if config.last_block is None else config.last_block
    if not 0 <= config.first_block <= last < len(blocks):
        raise PrunellmError(f"block range {config.first_block}..{last} is outside the model's {len(blocks)} blocks "
                            f"(0..{len(blocks) - 1})")
    if config.batch_size < 1:
        raise PrunellmError(f"batch_size must be positive, got {config.batch_size}")
    return range(config.first_block, last + 1)


def target_layers(model: nn.Module, config: WalkConfig) -> dict[str, nn.Module]:
    """The linear layers, by full name, that a walk with `config` compresses."""
    blocks = find_blocks(model)
    layers: dict[str, nn.Module] = {}
    for index in check_walk_range(blocks, config):
        layers.update(find_linear_layers(blocks.modules[index], blocks.name(index), config.include, config.exclude))
    return layers


def compress_model(model: nn.Module, method: Method, calibration: torch.Tensor, config: WalkConfig | None = None,
                   layer_sparsity: dict[str, float] | None = None, *, host: BlockHost | None = None,
                   resume: ResumePoint | None = None, dist: Group | None = None,
                   result: WalkResult | None = None) -> WalkResult:
    """Compress `model` in place. calibration: (N, T) token ids (this process's share under
    `dist`). layer_sparsity: per-layer targets (an allocation) overriding the method's own.

    host: where blocks live between steps (default: all in memory). resume: start again at a
    block with its checkpointed inputs, appending to `result` (the records of the blocks done).
    dist: several processes; statistics are summed over them and layers solved on one each.
    """
    config = config or WalkConfig()
    host = host or BlockHost()
    blocks = find_blocks(model)
    last = check_walk_range(blocks, config)[-1]
    device = dist.device if dist is not None else resolve_device(config.device)
    model_dtype = next(model.parameters()).dtype
    forward_dtype = resolve_forward_dtype(config.forward_dtype, device, model_dtype)
    autocast = autocast_dtype(forward_dtype, device, model_dtype)
    if result is None:
        result = WalkResult()
    result.forward_dtype = forward_dtype
    result.targets = dict(layer_sparsity or {})
    started = time.perf_counter()
    solve_seconds = 0.0

    start = resume.index if resume is not None else 0
    show = config.progress and (dist is None or dist.is_main)
    bar = tqdm(total=last + 1 - max(start, config.first_block), desc="blocks", unit="block", disable=not show)
    for step in walk_blocks(model, calibration, device=device, batch_size=config.batch_size,
                            offload_activations=config.offload_activations, blocks=blocks, host=host,
                            resume=resume, stop=last, autocast=autocast):
        if step.index < config.first_block:
            continue
        layers = find_linear_layers(step.block, step.name, config.include, config.exclude)
        if layers:
            solve_seconds += _compress_block(step, layers, method, config, result, bar, layer_sparsity or {},
                                             len(blocks), dist, host)
        bar.update(1)
    bar.close()
    result.seconds["solve"] = solve_seconds
    result.seconds["total"] = time.perf_counter() - started
    result.seconds["calibration_forwards"] = result.seconds["total"] - solve_seconds
    return result


def _compress_block(step: BlockStep, layers: dict[str, nn.Module], method: Method, config: WalkConfig,
                    result: WalkResult, bar: tqdm, layer_sparsity: dict[str, float], n_blocks: int,
                    dist: Group | None, host: BlockHost) -> float:
    """Collect statistics and compress every layer of one block; returns the solver seconds."""
    groups = discover_input_groups(step.block, layers, lambda: step.run(0))
    missing = set(layers) - {name for group in groups for name in group.names}
    for name in sorted(missing):
        log.warning("layer %s was never called on calibration data: left unchanged", name)
    stages: list[list[InputGroup]] = [[g] for g in groups] if config.true_sequential else [groups]
    needs = "hessian" if config.layer_errors else method.statistics
    seconds = 0.0
    # With one stage, nothing runs the block again before its outputs, and every statistic is
    # taken on unsolved layers: they can wait outside memory (a streaming host parks them in the
    # checkpoint), during the statistics pass too.
    parked = len(stages) == 1
    for stage in stages:
        hessians: dict[str, torch.Tensor | None] = {name: None for group in stage for name in group.names}
        held_out: dict[str, HeldOut | None] = {}
        if needs != "none":
            # The layers leave memory before the Hessians arrive: the two never add up. (Only
            # layers the pass calls: one never called is left as it is, in memory.)
            called = {name: layers[name] for group in stage for name in group.names}
            with host.statistics_pass(step.index, called) if parked else nullcontext():
                collector = StatisticsCollector(layers, stage, device=step.device, diag_only=needs == "diag",
                                                held_out_every=method.held_out_every if needs == "hessian" else 0)
                for batch in range(step.num_batches):
                    collector.run(lambda: step.run(batch))
                collector.remove()
            if dist is not None:
                dist.reduce_statistics(collector.accumulators)
            hessians = collector.hessians()
            held_out = collector.held_out()
            del collector  # its accumulators hold the Hessians too
        names = list(hessians)
        owners = dict(zip(names, _owners(names, layers, dist)))
        if parked:
            host.park(step.index, {name: layers[name] for name in names}, after_statistics=True)
        by_name: dict[str, tuple[LayerRecord, GGUFBlocks | QuantGrid | None]] = {}
        # The widest first: its Hessian and inverse are the block's largest, and they are freed
        # before the next solve; Hessians are popped, so that a shared one goes with its group's
        # last layer. Solves are independent within a stage: the order changes no result.
        for name in sorted(names, key=lambda n: -in_features(layers[n])):
            hessian = hessians.pop(name)
            if owners[name] is not None and owners[name] != dist.rank:
                continue  # another process solves this one
            layer_method = method.with_sparsity(layer_sparsity[name]) if name in layer_sparsity else method
            layer_method = layer_method.for_layer(name, step.index, n_blocks)
            held = held_out.pop(name, None)
            if layer_method.held_out_every and held is None:
                _warn_no_held_out()
                layer_method = layer_method.without_held_out()
            lend = (layer_method.overwrites_lent_hessian and hessian is not None and hessian.dim() == 2
                    and all(h is not hessian for h in hessians.values()))  # its last use
            with host.backed_up(hessian) if lend else nullcontext() as restore:
                by_name[name] = _compress_layer(name, layers[name], hessian, layer_method, step, config, bar,
                                                host if parked else None, restore, held)
            del hessian, held
            seconds += by_name[name][0].seconds
        if parked:
            for name in names:
                if name not in by_name:  # solved elsewhere: the broadcast below writes into it
                    host.unpark(step.index, name, layers[name])
        solved = [by_name[name] for name in names if name in by_name]  # records in the model's order
        if dist is not None:
            solved = _share_solutions(names, [owners[name] for name in names], layers, solved, dist)
        for record, grid in solved:
            result.layers.append(record)
            if isinstance(grid, GGUFBlocks):
                result.gguf_blocks[record.name] = grid
            elif isinstance(grid, QuantGrid):
                result.quant_grids[record.name] = grid
    return seconds


_warned_no_held_out = False


def _warn_no_held_out() -> None:
    """Once per process: hessian_shrink "auto" had no held-out windows to choose on."""
    global _warned_no_held_out
    if not _warned_no_held_out:
        log.warning("hessian_shrink auto needs at least 2 calibration windows to hold one out: "
                    "quantizing with the plain Hessian (0)")
        _warned_no_held_out = True


def _owners(names: list[str], layers: dict[str, nn.Module], dist: Group | None) -> list[int | None]:
    """The rank that solves each layer (None everywhere in a single process)."""
    if dist is None:
        return [None] * len(names)
    costs = []
    for name in names:
        columns = in_features(layers[name])
        costs.append(solve_cost(layers[name].weight.numel() // columns, columns))
    return list(dist.owners(costs))


def _share_solutions(names: list[str], owners: list[int | None], layers: dict[str, nn.Module],
                     solved: list[tuple[LayerRecord, GGUFBlocks | QuantGrid | None]],
                     dist: Group) -> list[tuple[LayerRecord, GGUFBlocks | QuantGrid | None]]:
    """Every rank gets every layer's new weight (from the rank that solved it) and record."""
    for name, owner in zip(names, owners):
        dist.broadcast_(layers[name].weight.data, src=owner)  # in its own layout and dtype: bit-equal copies
    gathered = {record.name: (record, grid) for share in dist.all_gather(solved) for record, grid in share}
    return [gathered[name] for name in names]


def _compress_layer(name: str, layer: nn.Module, hessian: torch.Tensor | None, method: Method, step: BlockStep,
                    config: WalkConfig, bar: tqdm, parked_in: BlockHost | None = None,
                    restore_hessian: Callable[[torch.Tensor], None] | None = None, held_out: HeldOut | None = None
                    ) -> tuple[LayerRecord, GGUFBlocks | QuantGrid | None]:
    """Solve one layer and write its new weight; returns its record and GGUF grid (if any).
    parked_in: the host the layer waits in; it comes back for the read, leaves again during the
    solve (the solver works on a copy) and comes back for the write. restore_hessian: the solve
    may overwrite `hessian` (its last use); this refills it (host.backed_up). held_out: the
    Hessian of held-out calibration windows, for a method that chooses on them."""
    started = time.perf_counter()
    if parked_in is not None:
        parked_in.unpark(step.index, name, layer)
    weight = read_weight(layer).to(step.device)  # (out, in): a float32 copy, the solver's to work in
    shape = tuple(weight.shape)
    if parked_in is not None:
        parked_in.park(step.index, {name: layer})
    solved = method.compress(weight, hessian, consume_weight=True, restore_hessian=restore_hessian, held_out=held_out)
    del weight
    if parked_in is not None:
        parked_in.unpark(step.index, name, layer)
    if solved.damp_frac is not None and solved.damp_frac > getattr(method.config, "damp_frac", 0) * 1.0001:
        log.warning("layer %s: Hessian not positive definite after damping; used damp_frac=%g",
                    name, solved.damp_frac)
    error = None
    if config.layer_errors and hessian is not None and hessian.dim() == 2:
        if restore_hessian is not None:
            restore_hessian(hessian)  # the solve may have left its inverse factor there
        # The layer still holds its dense weight (unchanged in memory, read again when parked)
        error = relative_layer_error(weight_view(layer), solved.weight, hessian)
    write_weight(layer, solved.weight)
    grid = None
    if isinstance(solved.grid, GGUFBlocks):  # what a GGUF export packs, bit for bit
        grid = GGUFBlocks(solved.grid.type, solved.grid.params.cpu())
    elif isinstance(solved.grid, QuantGrid):  # what a compressed export packs
        grid = dataclasses.replace(solved.grid, scale=solved.grid.scale.cpu(), zero=solved.grid.zero.cpu())
    seconds = time.perf_counter() - started
    short = name[len(step.name) + 1:]
    zeros = 1.0 - torch.count_nonzero(solved.weight).item() / solved.weight.numel()  # no (R, C) temporary
    record = LayerRecord(name, step.index, shape, zeros, error, seconds, solved.damp_frac, solved.hessian_shrink)
    bar.set_postfix_str(f"{short} {seconds:.2f}s err={error:.4f}" if error is not None else f"{short} {seconds:.2f}s")
    log.debug("%s: sparsity %.3f, relative error %s, %.2fs", name, record.sparsity, error, seconds)
    return record, grid


def with_forward_dtype(config: WalkConfig, device: torch.device, model_dtype: torch.dtype | None) -> WalkConfig:
    """`config` with its forward dtype resolved (forward_dtype.resolve_forward_dtype): what a
    report and a recipe record, so that a replay on another CPU runs the same forwards."""
    return dataclasses.replace(config, forward_dtype=resolve_forward_dtype(config.forward_dtype, device, model_dtype))

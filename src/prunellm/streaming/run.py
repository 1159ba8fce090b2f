"""Prune a model larger than memory: read, compress and write it one decoder block at a time.

`prune_streaming` is `pipeline.prune` plus saving, for a safetensors directory, with the model
never whole in memory: a meta-device skeleton, each block read (memory-mapped) when the walk
reaches it and written as its own shard when done, the embeddings and head copied tensor by
tensor. Peak memory is about one block plus the calibration activations. A killed run,
started again with the same arguments, continues from the last block it finished (see
docs/scale.md); under torchrun every process takes part (prunellm.distributed).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import resolve_device
from ..distributed import Group
from ..errors import PrunellmError
from ..io import check_output_dir, load_tokenizer, write_json_atomic
from ..io.grids import save_gguf_blocks, save_quant_grids
from ..io.lazy import LazyCheckpoint
from ..io.dtypes import dtype_name, hf_save_dtype, method_quantizes, stored_dtype
from ..io.load import resolve_dtype
from .resume import RunState, kill_point
from ..io.save import REPORT_FILE
from .shards import ShardPlan, block_unit, write_index
from ..io.skeleton import Skeleton, build_skeleton
from ..methods import Method
from ..compression import CalibrationConfig, EvalConfig, bos_for, build_report, calibration_windows, check_layer_shapes
from .heap import young_objects_only
from .host import StreamingHost
from ..walker import (AllocationConfig, Blocks, LayerRecord, ResumePoint, WalkConfig, WalkResult, check_walk_range,
                     compress_model, find_blocks, with_forward_dtype)

log = logging.getLogger(__name__)


@dataclass
class StreamedRun:
    result: WalkResult
    report: dict[str, Any]
    out: Path
    resumed_from: int | None  # the block a resumed run started at; None for a fresh run


def prune_streaming(source: str | Path, out: str | Path, method: Method, calibration: CalibrationConfig | None = None,
                    walk: WalkConfig | None = None, *, dtype: str = "auto", save_dtype: str = "auto",
                    overwrite: bool = False, allocation: AllocationConfig | None = None, group: Group | None = None,
                    model_label: str | None = None, report_extra: dict[str, Any] | None = None) -> StreamedRun:
    """Compress the model of the safetensors directory `source` into the directory `out`.

    The output is a sharded Hugging Face checkpoint (one shard per block, one for the
    embeddings, one for an untied head) with its index, config, tokenizer and report.json,
    equal in weights to `pipeline.prune` + `save_model` on the whole model. save_dtype: what the
    shards store, as `--save-dtype` (io/dtypes.py: "auto" is the source's dtype for a sparse
    result, the compute dtype for a quantized one). group: one of several processes; all must
    call this with the same arguments. report_extra: entries added to report.json.
    """
    calibration = calibration or CalibrationConfig()
    walk = walk or WalkConfig()
    allocation = allocation or AllocationConfig()
    if allocation.kind != "uniform":
        raise PrunellmError("--allocation owl needs the whole model for its dense pass: prune without --stream")
    device = group.device if group is not None else resolve_device(walk.device)
    # The in-memory rule (load_model's compute_device): "auto" is float32 when computing on CPU
    # (half-precision matmuls are slow there), else the checkpoint's dtype.
    skeleton = build_skeleton(LazyCheckpoint(source), resolve_dtype(dtype, device))
    model = skeleton.model
    walk = with_forward_dtype(walk, device, model.dtype)  # "auto" resolved: the report and resume state say what ran
    saved = hf_save_dtype(save_dtype, stored=stored_dtype(source), compute=model.dtype,
                          quantizes=method_quantizes(method.describe()))
    blocks = find_blocks(model)
    last = check_walk_range(blocks, walk)[-1]  # before any state: a bad range leaves nothing behind
    check_layer_shapes(model, method, walk)
    plan = _shard_plan(skeleton, blocks)
    tokenizer = load_tokenizer(source)

    state = RunState(out)
    main = group is None or group.is_main
    if main:
        state.clear_finished()
    _barrier(group)  # every process sees the same work directory
    check_output_dir(out, overwrite)
    resumed = state.load(_settings(skeleton, method, calibration, walk, allocation, device, group, saved))
    _barrier(group)  # all have read the state before the first process writes one
    windows = calibration_windows(calibration, tokenizer, bos_for(model, tokenizer))  # (N, T)
    if group is not None:
        windows = group.shard(windows)  # (N_r, T)
    if main:
        state.create()
    _barrier(group)
    if resumed:
        log.warning("resuming the interrupted run in %s at block %d", state.root, state.next_block)

    result = WalkResult(layers=[LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in state.data["layers"]])
    with young_objects_only():  # each block's heap trim collects what the run made, not every object
        host = StreamingHost(skeleton, blocks, plan, state, result, group, save_dtype=saved)
        gguf_grids, quant_grids = host.load_grids()
        result.gguf_blocks.update(gguf_grids)
        result.quant_grids.update(quant_grids)
        torch.manual_seed(calibration.seed)
        started = time.perf_counter()
        if main:
            for unit in ("embeddings", "head"):
                if unit in plan.keys and unit not in state.written:
                    host.copy_unit(unit)
        resumed_from = state.next_block if resumed else None
        if state.next_block <= last:
            resume = None
            if state.next_block > 0:
                inputs = state.load_inputs(state.next_block, *_rank_world(group))
                resume = ResumePoint(state.next_block, inputs)
            compress_model(model, method, windows, walk, host=host, resume=resume, dist=group, result=result)
        if main:
            for index in range(last + 1, len(blocks)):  # blocks after the range: copied as they are
                if block_unit(index) not in state.written:
                    host.copy_unit(block_unit(index))
    result.seconds["total"] = time.perf_counter() - started

    report = build_report(model_source=model_label or str(source), model=model, method=method,
                          calibration=calibration, walk=walk, result=result, eval_config=EvalConfig(),
                          dense_ppl={}, compressed_ppl={}, allocation=allocation)
    report["streaming"] = {"shards": len(plan), "resumed_from_block": resumed_from,
                           "processes": group.world if group is not None else 1}
    report["saved_dtype"] = dtype_name(saved)
    report.update(report_extra or {})
    path = Path(out).expanduser()
    if main:
        _finish_directory(state, skeleton, plan, tokenizer, source, report, result, saved)
        path = state.finish(overwrite)
    _barrier(group)
    return StreamedRun(result, report, path, resumed_from)


def _shard_plan(skeleton: Skeleton, blocks: Blocks) -> ShardPlan:
    """One shard for the embeddings (and everything else outside the blocks), one per block,
    one for an untied head: no unit bigger than the biggest of them is ever in memory."""
    head = skeleton.model.get_output_embeddings()
    head_path = next((path for path, module in skeleton.model.named_modules() if module is head), None)
    block_names = {block_unit(i): skeleton.stored(blocks.name(i)) for i in range(len(blocks))}
    in_blocks = {name for names in block_names.values() for name in names}
    head_names = skeleton.stored(head_path) if head_path else []
    outside = [name for name in skeleton.model_name if name not in in_blocks and name not in head_names]
    keys = {"embeddings": outside, **block_names}
    if head_names:
        keys["head"] = head_names
    return ShardPlan(list(keys), keys)


def _settings(skeleton: Skeleton, method: Method, calibration: CalibrationConfig, walk: WalkConfig,
              allocation: AllocationConfig, device: torch.device, group: Group | None,
              saved: torch.dtype) -> dict[str, Any]:
    """Everything the output depends on: a resumed run must match it exactly."""
    walk_settings = {k: v for k, v in dataclasses.asdict(walk).items() if k not in ("device", "progress")}
    return {"model": str(skeleton.checkpoint.directory.resolve()), "files": skeleton.checkpoint.fingerprint(),
            "dtype": str(skeleton.model.dtype), "saved_dtype": str(saved), "device": device.type,
            "method": method.describe(),
            "calibration": calibration.describe(), "walk": walk_settings,
            "allocation": dataclasses.asdict(allocation), "processes": group.world if group is not None else 1}


def _finish_directory(state: RunState, skeleton: Skeleton, plan: ShardPlan, tokenizer: Any, source: str | Path,
                      report: dict[str, Any], result: WalkResult, saved: torch.dtype) -> None:
    """Index, config, generation config, tokenizer, report (and GGUF grids) beside the shards."""
    staging, model = state.staging, skeleton.model
    write_index(staging, plan, sum(state.written.values()), model.num_parameters())
    config = copy.deepcopy(model.config)  # what save_pretrained writes
    config.dtype = dtype_name(saved)
    config.architectures = [type(model).__name__]
    config.save_pretrained(staging)
    generation = _generation_config(model, source)
    if generation is not None:
        generation.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if result.gguf_blocks:
        save_gguf_blocks(staging, result.gguf_blocks)
    if result.quant_grids:
        save_quant_grids(staging, result.quant_grids)
    write_json_atomic(staging / REPORT_FILE, report)
    state.commit(done=True)
    kill_point("finish")


def _generation_config(model: nn.Module, source: str | Path) -> Any:
    """The source's generation_config.json when it has one (as from_pretrained reads it)."""
    from transformers import GenerationConfig

    if not model.can_generate():
        return None
    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return model.generation_config


def _rank_world(group: Group | None) -> tuple[int, int]:
    return (group.rank, group.world) if group is not None else (0, 1)


def _barrier(group: Group | None) -> None:
    if group is not None:
        group.barrier()

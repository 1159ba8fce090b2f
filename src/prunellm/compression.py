"""One compression run's parts, in memory: calibrate, compress, evaluate, and the report that
records it. `pipeline.prepare` and `pipeline.run` assemble them (with streaming and the output
formats); this module is what they, the sweep and the streamed run share."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import CalibrationSource, check_source_options, describe_source, load_calibration, needs_bos
from .devices import on_device, resolve_device
from .distributed import Group
from .errors import PrunellmError
from .eval import evaluate
from .io import library_versions
from .methods import Method
from .solvers.gguf_grids import check_gguf_problem
from .walker import (AllocationConfig, WalkConfig, WalkResult, collect_input_norms, compress_model, in_features,
                     owl_allocation, target_layers)

log = logging.getLogger(__name__)


@dataclass
class CalibrationConfig:
    """source: wikitext2, ptb, c4, a local file (.txt, .jsonl/.json, .csv, .parquet) or dataset
    directory, a Hugging Face dataset id, or the data itself (a list of strings or of chat
    conversations, a `datasets.Dataset`, token ids as a LongTensor [n, seqlen] or a list of 1-D
    tensors). Every source becomes one token stream (prunellm.data.sources) from which
    `num_samples` random windows of `seqlen` tokens are drawn with `seed`: token ids given are
    concatenated and cut like tokenized text, not used as windows as they are.
    config_name, split, column: a dataset's config, split (default "train") and column (default
    "text", else "messages" through the tokenizer's chat template).
    data_dir: local data (default: $PRUNELLM_DATA_DIR)."""

    source: CalibrationSource = "wikitext2"
    num_samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    data_dir: str | None = None
    config_name: str | None = None
    split: str | None = None
    column: str | None = None

    def check(self) -> None:
        """Refuse a source that names nothing or options it does not take, before any loading."""
        check_source_options(self.source, self.config_name, self.split, self.column)

    def describe(self) -> dict[str, Any]:
        """As plain JSON (report.json, resume checks): data given in memory as its size and hash;
        config_name, split and column only when set, so that earlier runs' records still match."""
        record = {"source": describe_source(self.source), "num_samples": self.num_samples, "seqlen": self.seqlen,
                  "seed": self.seed, "data_dir": self.data_dir}
        record.update({k: v for k, v in (("config_name", self.config_name), ("split", self.split),
                                          ("column", self.column)) if v is not None})
        return record


def calibration_windows(calibration: CalibrationConfig, tokenizer: Any, bos_token_id: int | None) -> torch.Tensor:
    """The calibration windows a config asks for: a (num_samples, seqlen) LongTensor."""
    return load_calibration(calibration.source, tokenizer, num_samples=calibration.num_samples,
                            seqlen=calibration.seqlen, seed=calibration.seed, bos_token_id=bos_token_id,
                            data_dir=calibration.data_dir, config_name=calibration.config_name,
                            split=calibration.split, column=calibration.column)  # (N, T)


@dataclass
class EvalConfig:
    """datasets: perplexity texts (test splits). seqlen: window length (None = calibration's).
    max_tokens: score only the first N tokens. dense: also evaluate the model before compression."""

    datasets: tuple[str, ...] = ()
    seqlen: int | None = None
    max_tokens: int | None = None
    batch_size: int = 1
    dense: bool = True


def bos_for(model: nn.Module, tokenizer: Any) -> int | None:
    """The BOS id to start every window with, for models that need it (Gemma), else None."""
    if not needs_bos(model.config):
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(model.config, "bos_token_id", None)
    if bos is None:
        raise PrunellmError(f"{model.config.model_type} needs a BOS token per window but its tokenizer has none")
    return int(bos)


def check_layer_shapes(model: nn.Module, method: Method, walk: WalkConfig) -> None:
    """Refuse, before any work, a block range outside the model and layers (of that range)
    whose inputs the n:m pattern, the groups or the GGUF type's blocks do not divide."""
    nm = getattr(method.config, "nm", None)
    group_size = getattr(method.config, "group_size", None)
    gguf = getattr(method.config, "gguf", None)
    for name, layer in target_layers(model, walk).items():
        columns = in_features(layer)
        if nm is not None and columns % nm[1]:
            raise PrunellmError(f"{name}: in_features {columns} is not divisible by m={nm[1]} of {nm[0]}:{nm[1]}")
        if group_size is not None and columns % group_size:
            raise PrunellmError(f"{name}: group_size {group_size} does not divide in_features {columns}")
        if gguf is not None:
            try:
                check_gguf_problem(gguf, columns, sparse=False)
            except PrunellmError as error:
                raise PrunellmError(f"{name}: {error}") from None


def layer_inputs(model: nn.Module, walk: WalkConfig) -> dict[str, int]:
    """The in_features of every layer a walk with `walk` compresses, by name (what the
    recommended grid's group size is fitted to: methods/recommended.py)."""
    return {name: in_features(layer) for name, layer in target_layers(model, walk).items()}


def prune(model: nn.Module, tokenizer: Any, method: Method, calibration: CalibrationConfig | None = None,
          walk: WalkConfig | None = None, allocation: AllocationConfig | None = None,
          dist: Group | None = None) -> WalkResult:
    """Compress `model` in place with `method` on calibration windows; returns per-layer records.

    allocation: how the method's sparsity is spread over layers (default uniform; "owl" adds
    one dense calibration pass to measure outliers). dist: one of several processes
    (`distributed.init_from_env`): each calibrates on its share of the windows, and every
    process ends with the same compressed model.
    """
    calibration = calibration or CalibrationConfig()
    walk = walk or WalkConfig()
    allocation = allocation or AllocationConfig()
    check_layer_shapes(model, method, walk)
    if allocation.kind != "uniform":
        method.with_sparsity(getattr(method.config, "sparsity", 0.0))  # refuses n:m and quantization-only early
    torch.manual_seed(calibration.seed)
    started = time.perf_counter()
    windows = calibration_windows(calibration, tokenizer, bos_for(model, tokenizer))  # (N, T)
    if dist is not None:
        windows = dist.shard(windows)  # (N_r, T)
    load_seconds = time.perf_counter() - started
    targets = None
    if allocation.kind == "owl":
        started = time.perf_counter()
        device = dist.device if dist is not None else resolve_device(walk.device)
        norms = collect_input_norms(model, windows, device=device, batch_size=walk.batch_size,
                                    include=walk.include, exclude=walk.exclude, dist=dist)
        targets = owl_allocation(model, norms, method.config.sparsity, allocation)
        allocation_seconds = time.perf_counter() - started
    result = compress_model(model, method, windows, walk, layer_sparsity=targets, dist=dist)
    result.seconds["load_calibration"] = load_seconds
    if targets is not None:
        result.seconds["allocation"] = allocation_seconds
    return result


def perplexities(model: nn.Module, tokenizer: Any, config: EvalConfig, *, default_seqlen: int = 2048,
                 data_dir: str | None = None, device: str | torch.device | None = None,
                 progress: bool = True) -> dict[str, float]:
    """Perplexity per dataset; the model visits `device` (default: CUDA when present) for the
    evaluation and goes back where it was (the walker keeps models on CPU between blocks)."""
    if not config.datasets:
        return {}
    target = resolve_device(device)
    with on_device(model, target):
        return evaluate(model, tokenizer, list(config.datasets), seqlen=config.seqlen or default_seqlen,
                        max_tokens=config.max_tokens, batch_size=config.batch_size,
                        bos_token_id=bos_for(model, tokenizer), data_dir=data_dir, device=target, progress=progress)


def describe_model(model: nn.Module, source: str) -> dict[str, Any]:
    """Where a model came from, its class, type and parameter count (tied ones once)."""
    return {"source": source, "class": type(model).__name__, "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}


def build_report(*, model_source: str, model: nn.Module, method: Method, calibration: CalibrationConfig,
                 walk: WalkConfig, result: WalkResult, eval_config: EvalConfig,
                 dense_ppl: dict[str, float], compressed_ppl: dict[str, float],
                 allocation: AllocationConfig | None = None) -> dict[str, Any]:
    """Everything needed to reproduce and judge a run, as plain JSON."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": describe_model(model, model_source),
        "method": method.describe(),
        "calibration": calibration.describe(),
        # the forward dtype that ran ("auto" resolved), whichever entry built `walk`
        "walk": {**dataclasses.asdict(walk), "forward_dtype": result.forward_dtype or walk.forward_dtype},
        "allocation": {**dataclasses.asdict(allocation or AllocationConfig()), "targets": result.targets},
        "seed": calibration.seed,
        "versions": library_versions(),
        "sparsity": {"compressed_layers": result.sparsity(), "layers": len(result.layers)},
        "layers": [dataclasses.asdict(r) for r in result.layers],
        "seconds": result.seconds,
        "perplexity": {"dense": dense_ppl, "compressed": compressed_ppl,
                       "seqlen": eval_config.seqlen or calibration.seqlen, "max_tokens": eval_config.max_tokens},
    }

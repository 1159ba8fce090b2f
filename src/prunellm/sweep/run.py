"""Run a sweep: one dense model, many compressed copies, every result written as it finishes.

Shared across settings: the loaded model (each setting prunes a deep copy), the calibration
windows, the tokenized evaluation texts, the resolved zero-shot tasks, and the dense model's
own scores (evaluated once, kept on --resume). Figures and the report are drawn by
`prunellm.report` from the results written here (the CLI redraws them as rows come, at most every 30 s, and at the end).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import on_device, resolve_device
from ..errors import PrunellmError
from ..eval import eval_token_ids, eval_windows, perplexity
from ..eval.zero_shot import TaskSuite, ZeroShotConfig, lm_eval_version
from ..io import check_output_dir, library_versions, save_model
from ..compression import (CalibrationConfig, EvalConfig, bos_for, build_report, calibration_windows,
                           check_layer_shapes, describe_model, layer_inputs)
from ..walker import (WalkConfig, check_walk_range, compress_model, find_blocks, read_weight, target_layers,
                      with_forward_dtype)
from .results import DENSE, MODELS_DIR, PLOTS_DIR, RESULTS_CSV, RESULTS_JSON, SweepResults, load_results
from .settings import SweepSetting

log = logging.getLogger(__name__)

# What a sweep writes into its directory: all that --overwrite removes (nothing else is touched).
_OUTPUTS = (RESULTS_JSON, RESULTS_CSV, PLOTS_DIR, MODELS_DIR, "report.html", "report.md")
# What identifies the model a sweep's rows were measured on (beside its dtype, in the spec).
MODEL_IDENTITY = ("source", "class", "model_type", "parameters")


@dataclass
class SweepConfig:
    """calibration: windows every setting is calibrated on. evaluation: perplexity texts
    (seqlen None = calibration's). zero_shot: lm-eval tasks (None = none). walk: the walker's
    options, shared by every setting. save_models: also save every compressed model under
    models/<setting>/. defaults: "recommended" or "paper", as for `prunellm prune`
    (pipeline.py)."""

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(("wikitext2",)))
    zero_shot: ZeroShotConfig | None = None
    walk: WalkConfig = field(default_factory=WalkConfig)
    save_models: bool = False
    defaults: str = "recommended"

    @property
    def eval_seqlen(self) -> int:
        return self.evaluation.seqlen or self.calibration.seqlen

    def spec(self, model: nn.Module) -> dict[str, Any]:
        """What every result depends on besides its setting and the model's identity: a resumed
        sweep must match it. (Devices, batch sizes and directories change speed, not results,
        and are left out; the dtype the model computes in changes results.)"""
        walk = self.walk
        spec = {
            "dtype": str(next(model.parameters()).dtype),
            "defaults": self.defaults,
            "calibration": {k: v for k, v in self.calibration.describe().items() if k != "data_dir"},
            "evaluation": {"datasets": list(self.evaluation.datasets), "seqlen": self.eval_seqlen,
                           "max_tokens": self.evaluation.max_tokens},
            "zero_shot": None if self.zero_shot is None else {
                "tasks": list(self.zero_shot.tasks), "num_fewshot": self.zero_shot.num_fewshot,
                "limit": self.zero_shot.limit},
            "walk": {"true_sequential": walk.true_sequential, "include": list(walk.include),
                     "exclude": list(walk.exclude), "first_block": walk.first_block, "last_block": walk.last_block,
                     "layer_errors": walk.layer_errors},
        }
        if walk.forward_dtype not in (None, "auto") and f"torch.{walk.forward_dtype}" != spec["dtype"]:
            # forwards in another dtype than the model's change results; the model's own (all that
            # older versions ran by default) stays out, so that their sweeps still resume
            spec["walk"]["forward_dtype"] = walk.forward_dtype
        return json.loads(json.dumps(spec))  # tuples as lists: equal to the spec read back from disk


def prepare_output(out_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> SweepResults | None:
    """Check, before any work, that `out_dir` can take this sweep; returns the results to resume
    (or None). Writes nothing."""
    out = Path(out_dir).expanduser()
    if resume and overwrite:
        raise PrunellmError("--resume and --overwrite exclude each other")
    if not os.path.lexists(out):
        check_output_dir(out, overwrite=False)  # a parent that can be written
        return None
    if not out.is_dir():
        raise PrunellmError(f"output path exists and is not a directory: {out}")
    if (out / RESULTS_JSON).is_file():
        if resume:
            return load_results(out)
        if overwrite:
            return None
        raise PrunellmError(f"sweep directory already exists: {out} (use --resume to finish it, --overwrite to "
                            "start over)")
    if any(out.iterdir()):
        raise PrunellmError(f"output directory exists and holds no sweep: {out} (choose a new or empty directory)")
    return None


class Sweep:
    """A checked sweep, ready to run. Construction does every check that needs the model (block
    range, n:m and group shapes, calibration and evaluation texts long enough) and the shared
    dense work that needs no forward pass; `run()` does the rest and yields each row as it is
    written."""

    def __init__(self, model: nn.Module, tokenizer: Any, settings: list[SweepSetting], config: SweepConfig,
                 out_dir: str | Path, *, model_source: str, gguf_file: str | None = None,
                 suite: TaskSuite | None = None, resume: bool = False, overwrite: bool = False) -> None:
        if not settings:
            raise PrunellmError("a sweep needs at least one setting")
        self.model, self.tokenizer, self.settings, self.config = model, tokenizer, settings, config
        self.out = Path(out_dir).expanduser()
        self.previous = prepare_output(self.out, resume=resume, overwrite=overwrite)
        self.device = resolve_device(config.walk.device)
        # "auto" forwards resolved once: every row, its report and the spec name the same dtype
        config = dataclasses.replace(config, walk=with_forward_dtype(config.walk, self.device,
                                                                     next(model.parameters()).dtype))
        self.config = config
        self.model_info = describe_model(model, model_source)
        if gguf_file is not None:  # what `prunellm export` reuses for a saved setting
            self.model_info["gguf_file"] = gguf_file
        self.spec = config.spec(model)
        if self.previous is not None and not _same_run(self.previous, self.model_info, self.spec):
            raise PrunellmError(f"cannot resume {self.out}: it was run with another model, dtype, calibration, "
                                "evaluation, tasks or walk (start a new directory, or --overwrite)")
        if config.zero_shot is not None and suite is None:
            suite = TaskSuite.load(config.zero_shot)
        self.suite = suite
        check_walk_range(find_blocks(model), config.walk)  # before the dense evaluation, not after it
        self.layer_inputs = layer_inputs(model, config.walk)  # what the recommended grid's groups fit
        for setting in settings:
            check_layer_shapes(model, setting.build(config.defaults, self.layer_inputs), config.walk)
        self.bos = bos_for(model, tokenizer)
        calibration = config.calibration
        self.windows = calibration_windows(calibration, tokenizer, self.bos)  # (N, T)
        self.eval_ids = {}
        for name in config.evaluation.datasets:
            ids = eval_token_ids(name, tokenizer, seqlen=config.eval_seqlen, max_tokens=config.evaluation.max_tokens,
                                 bos_token_id=self.bos, data_dir=calibration.data_dir)  # (N,)
            eval_windows(ids, config.eval_seqlen, self.bos)  # too short for one window: refused now
            self.eval_ids[name] = ids

    def run(self) -> Iterator[dict[str, Any]]:
        """Evaluate the dense model (unless resumed), then compress and evaluate every setting
        not done yet; after each, rewrite results.json and results.csv."""
        results = self.previous or SweepResults(model=self.model_info, spec=self.spec)
        results.settings = [s.to_dict() for s in self.settings]
        results.versions = {**library_versions(), "lm_eval": lm_eval_version()}
        if results.dense is None:
            results.add(self._dense_row())
        self._start_output()
        results.save(self.out)
        yield results.dense
        for setting in self.settings:
            if results.row(setting.key) is not None:
                log.info("%s: already in %s, skipped", setting.label, self.out)
                continue
            results.add(self._setting_row(setting, results.dense))
            results.save(self.out)
            yield results.row(setting.key)

    def _dense_row(self) -> dict[str, Any]:
        zeros, total = 0, 0
        for layer in target_layers(self.model, self.config.walk).values():
            weight = read_weight(layer)  # (out, in)
            zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
        row = {"key": DENSE, "label": DENSE, "method": DENSE, "sparsity": 0.0, "nm": None, "bits": None,
               "group_size": None, "target_sparsity": 0.0, "achieved_sparsity": zeros / total if total else 0.0,
               "layers": []}
        scores, seconds = self._evaluate(self.model)
        return {**row, **scores, "seconds": {"prune": 0.0, "eval": seconds}}

    def _setting_row(self, setting: SweepSetting, dense: dict[str, Any]) -> dict[str, Any]:
        pruned = copy.deepcopy(self.model)
        method = setting.build(self.config.defaults, self.layer_inputs)
        torch.manual_seed(self.config.calibration.seed)
        started = time.perf_counter()
        result = compress_model(pruned, method, self.windows, self.config.walk)
        prune_seconds = time.perf_counter() - started
        scores, eval_seconds = self._evaluate(pruned)
        row = {**setting.to_dict(), "achieved_sparsity": result.sparsity(), **scores,
               "layers": [{"name": r.name, "block": r.block, "sparsity": r.sparsity, "relative_error": r.relative_error}
                          for r in result.layers],
               "seconds": {"prune": prune_seconds, "solve": result.seconds.get("solve"), "eval": eval_seconds}}
        if self.config.save_models:
            report = build_report(model_source=self.model_info["source"], model=pruned, method=method,
                                  calibration=self.config.calibration, walk=self.config.walk, result=result,
                                  eval_config=self.config.evaluation, dense_ppl=dense["perplexity"],
                                  compressed_ppl=row["perplexity"])
            report["model"].update(self.model_info)
            save_model(pruned, self.tokenizer, self.out / MODELS_DIR / setting.key, report=report, overwrite=True,
                       gguf_blocks=result.gguf_blocks, quant_grids=result.quant_grids)
        del pruned
        return row

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        """({"perplexity": {text: ppl}, "zero_shot": {task: score}}, seconds) of `model` as it is."""
        started = time.perf_counter()
        with on_device(model, self.device):
            ppl = {name: perplexity(model, ids, seqlen=self.config.eval_seqlen,
                                    batch_size=self.config.evaluation.batch_size, bos_token_id=self.bos,
                                    device=self.device, progress=self.config.walk.progress)
                   for name, ids in self.eval_ids.items()}
            zero_shot = {}
            if self.suite is not None:
                scores = self.suite.evaluate(model, self.tokenizer, device=self.device, bos_token_id=self.bos)
                zero_shot = {task: {k: v for k, v in dataclasses.asdict(s).items() if k != "task"}
                             for task, s in scores.items()}
        return {"perplexity": ppl, "zero_shot": zero_shot}, time.perf_counter() - started

    def _start_output(self) -> None:
        """Create the directory on the first write; with --overwrite, clear a previous sweep's files."""
        if self.previous is None and self.out.is_dir():
            for name in _OUTPUTS:
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)

def _same_run(previous: SweepResults, model_info: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether a sweep on disk measured this model (source, class, size) with this spec (dtype,
    calibration, evaluation, tasks, walk): only then may its rows sit beside new ones."""
    same_model = all(previous.model.get(key) == model_info.get(key) for key in MODEL_IDENTITY)
    return same_model and previous.spec == spec

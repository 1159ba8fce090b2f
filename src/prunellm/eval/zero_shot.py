"""Zero-shot accuracy through lm-evaluation-harness, on the model in memory.

The model is wrapped in lm-eval's `HFLM` (no reload, no copy), and tasks are found by lm-eval's
own `TaskManager`: its built-in tasks (which download their data, so they need the network) and
YAML task files in local directories (`task_dirs`), whose data can be local JSON/JSONL files.
prunellm ships one such task, `prunellm_basics` (40 four-choice questions), which works offline.

    suite = TaskSuite.load(ZeroShotConfig(tasks=("prunellm_basics",)))  # checks names, no model
    scores = suite.evaluate(model, tokenizer)                            # {task: TaskScore}
    scores["prunellm_basics"].metrics["acc"]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from prunellm.devices import on_device
from prunellm.errors import PrunellmError

log = logging.getLogger(__name__)

BUILTIN_TASK_DIR = Path(__file__).resolve().parent / "tasks"
_INSTALL_HINT = "pip install 'prunellm[eval]'"


@dataclass
class ZeroShotConfig:
    """tasks: lm-eval task, group or tag names. task_dirs: extra directories of YAML task files
    (prunellm's own tasks are always included). num_fewshot: None keeps each task's default (0
    for most). limit: score only the first N items of each task (quick checks, not results).
    batch_size: requests per forward."""

    tasks: tuple[str, ...] = ()
    task_dirs: tuple[str, ...] = ()
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise PrunellmError(f"num_fewshot must be at least 0, got {self.num_fewshot}")
        if self.limit is not None and self.limit < 1:
            raise PrunellmError(f"limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise PrunellmError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class TaskScore:
    """One task's (or group's) metrics, e.g. {"acc": 0.75, "acc_norm": 0.72}, their standard
    errors, and the number of items scored (None for a group)."""

    task: str
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    samples: int | None = None
    num_fewshot: int | None = None


class TaskSuite:
    """Tasks resolved once (indexing lm-eval's ~15k built-in task files takes seconds, reading
    their data may take a download), then evaluated on any number of models."""

    def __init__(self, config: ZeroShotConfig, manager: Any) -> None:
        self.config = config
        self.manager = manager

    @classmethod
    def load(cls, config: ZeroShotConfig) -> "TaskSuite":
        """Check that lm-eval is installed, every task name exists and its data can be read,
        before any model work."""
        if not config.tasks:
            raise PrunellmError("no zero-shot tasks given")
        try:
            import lm_eval.tasks  # noqa: F401
        except ImportError:
            raise PrunellmError(f"zero-shot tasks need lm-evaluation-harness: {_INSTALL_HINT}") from None
        dirs = [BUILTIN_TASK_DIR]
        for name in config.task_dirs:
            path = Path(name).expanduser()
            if not path.is_dir():
                raise PrunellmError(f"task directory not found: {path}")
            dirs.append(path.resolve())
        with _quiet_lm_eval():
            # Local tasks first: they index in milliseconds; lm-eval's own only when asked for.
            # keyed by each directory's modification time too: a task file added since is indexed
            key = tuple((str(d), Path(d).stat().st_mtime_ns) for d in dirs)
            manager = _task_manager(key, include_defaults=False)
            if not set(config.tasks) <= set(manager.all_tasks):
                manager = _task_manager(key, include_defaults=True)
        unknown = [name for name in config.tasks if name not in manager.all_tasks]
        if unknown:
            local = ", ".join(sorted(t for t in manager.all_tasks if t.startswith("prunellm")))
            raise PrunellmError(f"unknown lm-eval task {', '.join(map(repr, unknown))} (offline tasks here: {local}; "
                                "add YAML task files with --task-dir)")
        try:
            with _quiet_lm_eval():
                # Build the tasks once now: their data is read (or downloaded and cached) before
                # any model work, so a missing file or an offline machine fails in seconds.
                manager.load(list(config.tasks))
        except _task_errors() as error:  # the task's fault: its YAML, its data, the network
            raise PrunellmError(f"cannot load task {', '.join(config.tasks)}: "
                                f"{type(error).__name__}: {_first_line(error)}") from error
        return cls(config, manager)

    def evaluate(self, model: Any, tokenizer: Any, *, device: str | torch.device | None = None,
                 bos_token_id: int | None = None) -> dict[str, TaskScore]:
        """Scores per task (and per group) of `model` as it is now. The model visits `device`
        (default: where it is) and goes back; with `bos_token_id` every request starts with BOS."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        target = torch.device(device) if device is not None else next(model.parameters()).device
        with on_device(model, target), _quiet_lm_eval(), _without_environment_survey():
            # HFLM reads the device from the model; add_bos_token None keeps the tokenizer's
            # default. A copy of the tokenizer: lm-eval sets a pad token on the one it is
            # given, and the caller's may be saved with the model afterwards.
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=self.config.batch_size,
                      add_bos_token=True if bos_token_id is not None else None)
            # Tasks by name: built afresh for every model, their data cached since load().
            output = simple_evaluate(model=lm, tasks=list(self.config.tasks), task_manager=self.manager,
                                     num_fewshot=self.config.num_fewshot, limit=self.config.limit,
                                     log_samples=False, bootstrap_iters=1000)
        return parse_results(output)


def parse_results(output: dict[str, Any]) -> dict[str, TaskScore]:
    """lm-eval's {"results": {task: {"acc,none": .., "acc_stderr,none": ..}}, "n-samples": ..}
    as TaskScores. A metric under a filter other than "none" is named "metric (filter)"."""
    counts = output.get("n-samples", {})
    fewshot = output.get("n-shot", {})
    scores: dict[str, TaskScore] = {}
    for task, values in output.get("results", {}).items():
        score = TaskScore(task, samples=counts.get(task, {}).get("effective"), num_fewshot=fewshot.get(task))
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # alias, name, sample_len, or "N/A" stderr
            metric, filter_name = key.split(",", 1)
            if filter_name != "none":
                metric = f"{metric} ({filter_name})"
            if metric.endswith("_stderr") or "_stderr " in metric:
                score.stderr[metric.replace("_stderr", "")] = float(value)
            elif math.isfinite(value):
                score.metrics[metric] = float(value)
        scores[task] = score
    return scores


def lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # not installed: no version to report
        return None


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval warns at every call that it was given a model object rather than a name, and
    logs every task it builds: expected here, so only its errors show (all of it under DEBUG)."""
    lm_logger = logging.getLogger("lm_eval")
    previous = lm_logger.level
    if not log.isEnabledFor(logging.DEBUG):
        lm_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lm_logger.setLevel(previous)


@functools.lru_cache(maxsize=4)
def _task_manager(dirs: tuple[tuple[str, int], ...], include_defaults: bool) -> Any:
    """lm-eval's index of the tasks in `dirs` ((path, modification time) pairs) and, with
    include_defaults, its ~15k built-in ones: built once a process, since indexing the built-in
    ones takes seconds (a sweep, or a second evaluation, reuses it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[path for path, _ in dirs], include_defaults=include_defaults)


@contextlib.contextmanager
def _without_environment_survey() -> Iterator[None]:
    """simple_evaluate ends by surveying the machine into its results (torch's collect_env:
    subprocesses, half a second a call, most of a small task's evaluation); the scores are all
    that is read here, so the survey is skipped for the call."""
    import lm_eval.evaluator

    survey = getattr(lm_eval.evaluator, "add_env_info", None)
    if survey is None:  # another lm-eval: nothing to skip
        yield
        return
    lm_eval.evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = survey


def _task_errors() -> tuple[type[BaseException], ...]:
    """What a task that cannot be built raises: missing or unreadable data and no network
    (OSError, datasets' errors), bad values or fields in its YAML or data (ValueError, KeyError,
    YAMLError). Anything else (AttributeError, TypeError, ImportError) is a bug, in lm-eval or
    here, and must surface as one rather than as the task's fault."""
    import yaml
    from datasets.exceptions import DatasetsError

    return OSError, ValueError, LookupError, yaml.YAMLError, DatasetsError


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""The one way to prepare and run a compression: settings in, a checked job, a finished run.

`prepare(settings)` turns what the user asked for (the CLI's flags, or keywords from Python)
into a ready job: the method with its resolved defaults, the allocation, the output format's
checks, the output path, the calibration and evaluation texts. Everything that can be refused
is refused there, before any model is loaded. `run(job)` then loads, compresses (in memory, or
streamed one block at a time), evaluates and writes. The CLI, the Python API, `--stream` and
the sweep (`resolve_method`) all go through here, so the same settings give the same model
from every entry.

Where the paper's method and the recommended defaults are named: `build_method("sparsegpt",
...)` (prunellm.methods) is exactly the options given, the method as published unless asked
otherwise. `Settings.defaults = "recommended"` (the default everywhere: CLI, Python, sweep)
fills the options the user left unset from methods/recommended.py's table (today: ALPS
refinement for SparseGPT without quantization); `defaults = "paper"` (`--defaults paper`)
fills nothing. The report records the resolved method and which defaults applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .compression import (CalibrationConfig, EvalConfig, bos_for, build_report, check_layer_shapes, describe_model,
                          perplexities, prune)
from .devices import resolve_device
from .distributed import Group
from .errors import PrunellmError
from .formats import FinishedRun, OutputFormat, OutputSpec, get_format
from .methods import Method, build_method
from .methods.recommended import with_recommended
from .walker import AllocationConfig, WalkConfig, WalkResult

DEFAULTS = ("recommended", "paper")
# The in-memory run's parts, re-exported: `from prunellm.pipeline import CalibrationConfig, prune`.
__all__ = ["DEFAULTS", "CalibrationConfig", "EvalConfig", "Job", "Outcome", "Settings", "bos_for", "build_report",
           "check_layer_shapes", "check_output_file", "describe_model", "export", "perplexities", "prepare", "prune",
           "resolve_method", "run"]


@dataclass(frozen=True)
class Settings:
    """A compression run as the user asked for it.

    method, options: a registered method and the options the user set (build_method's keywords;
    unset ones stay out, so that `defaults` can fill them). defaults: "recommended" or "paper"
    (see the module docstring). allocation: "uniform" or "owl" (None: from the defaults).
    stream: hold one block in memory at a time (a safetensors directory in, hf format out)."""

    model: str | None = None
    method: str = "sparsegpt"
    options: dict[str, Any] = field(default_factory=dict)
    defaults: str = "recommended"
    allocation: str | None = None
    owl_lambda: float | None = None
    owl_threshold: float = 5.0
    allocation_unit: str = "block"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    walk: WalkConfig = field(default_factory=WalkConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    output: OutputSpec = field(default_factory=OutputSpec)
    dtype: str = "auto"
    stream: bool = False


@dataclass
class Job:
    """Settings checked and resolved: ready to run."""

    settings: Settings
    method: Method
    allocation: AllocationConfig
    output: OutputSpec  # with what the format resolved (GGUF: its source file)
    format: OutputFormat
    device: torch.device
    compute_dtype: torch.dtype | str
    note: str | None  # what the recommended defaults filled in, for the user; None when nothing
    group: Group | None = None


@dataclass
class Outcome:
    """What a run did: its records and report, the perplexities, where it wrote (or None)."""

    result: WalkResult
    report: dict[str, Any]
    dense: dict[str, float]
    compressed: dict[str, float]
    path: Path | None = None
    message: str | None = None  # the line that says what was written
    resumed_from: int | None = None  # a resumed streamed run: the block it started at


def resolve_method(name: str, options: dict[str, Any], *, defaults: str = "recommended",
                   allocation: str | None = None, owl_lambda: float | None = None, owl_threshold: float = 5.0,
                   allocation_unit: str = "block", can_allocate: bool = True
                   ) -> tuple[Method, AllocationConfig, str | None]:
    """(method, allocation, note): the method with the defaults applied to the options the user
    left unset. Bad options fail here, before any loading."""
    if defaults not in DEFAULTS:
        raise PrunellmError(f"unknown defaults {defaults!r}: choose {' or '.join(DEFAULTS)}")
    note = None
    if defaults == "recommended":
        options, allocation, owl_lambda, note = with_recommended(name, options, allocation, owl_lambda,
                                                                 can_allocate=can_allocate)
    method = build_method(name, **options)
    allocation_config = AllocationConfig(allocation or "uniform", *([] if owl_lambda is None else [owl_lambda]),
                                         owl_threshold=owl_threshold, unit=allocation_unit)
    return method, allocation_config, note


def prepare(settings: Settings, group: Group | None = None) -> Job:
    """Check and resolve `settings` before any model is loaded. group: one of several
    processes under torchrun (prunellm.distributed), else None."""
    from .data import load_eval_text
    from .io.load import resolve_dtype

    method, allocation, note = resolve_method(
        settings.method, dict(settings.options), defaults=settings.defaults, allocation=settings.allocation,
        owl_lambda=settings.owl_lambda, owl_threshold=settings.owl_threshold,
        allocation_unit=settings.allocation_unit, can_allocate=not settings.stream)
    device = group.device if group is not None else resolve_device(settings.walk.device)
    compute_dtype = resolve_dtype(settings.dtype, device)
    fmt = get_format(settings.output.format)
    output = fmt.check(settings.output, method, settings.model, compute_dtype)
    if settings.stream:
        _check_streamed(settings)
    if output.path is not None:
        _check_output_path(output, fmt)
    for name in settings.evaluation.datasets:  # a typo in --eval must not wait for the end of a long prune
        load_eval_text(name, data_dir=settings.calibration.data_dir)
    return Job(settings, method, allocation, output, fmt, device, compute_dtype, note, group)


def run(job: Job) -> Outcome | None:
    """Load, compress, evaluate and write the job. Returns None in a process other than the
    first of a group (every process ends with the same model; the first evaluates and saves)."""
    if job.settings.stream:
        return _run_streamed(job)
    from .formats import load_model
    from .io.default_model import gguf_file, model_label
    from .io.dtypes import round_weights

    settings, method, group = job.settings, job.method, job.group
    model, tokenizer = load_model(settings.model, dtype=settings.dtype, compute_device=job.device)
    job.format.check_model(job.output, model, method, settings.walk)
    eval_kwargs = dict(default_seqlen=settings.calibration.seqlen, data_dir=settings.calibration.data_dir,
                       device=job.device, progress=settings.walk.progress)
    is_main = group is None or group.is_main
    evaluation = settings.evaluation
    dense = perplexities(model, tokenizer, evaluation, **eval_kwargs) if evaluation.dense and is_main else {}
    result = prune(model, tokenizer, method, settings.calibration, settings.walk, job.allocation, dist=group)
    if not is_main:
        return None
    written = None
    if job.output.path is not None:
        written = job.format.stored_dtype(job.output, model, method, settings.model, job.compute_dtype)
    if written is not None:
        round_weights(model, written)  # the figures below are then those of the saved weights
    compressed = perplexities(model, tokenizer, evaluation, **eval_kwargs)
    report = build_report(model_source=model_label(settings.model), model=model, method=method,
                          calibration=settings.calibration, walk=settings.walk, result=result,
                          eval_config=evaluation, dense_ppl=dense, compressed_ppl=compressed,
                          allocation=job.allocation)
    report["defaults"] = settings.defaults  # with "method" (resolved): what ran, and why
    source_file = gguf_file(settings.model)
    if source_file is not None:
        report["model"]["gguf_file"] = source_file
    outcome = Outcome(result, report, dense, compressed)
    if job.output.path is not None:
        finished = FinishedRun(model, tokenizer, result, method, report, settings.model,
                               extra={"saved_dtype": written})
        outcome.path, outcome.message = job.format.write(job.output, finished)
    return outcome


def _run_streamed(job: Job) -> Outcome | None:
    from .streaming import prune_streaming

    settings = job.settings
    # A single-file format (GGUF) streams into a directory beside its file, then converts it.
    directory = job.format.streamed_directory(job.output)
    streamed = prune_streaming(settings.model, directory, job.method, settings.calibration, settings.walk,
                               dtype=settings.dtype, overwrite=job.output.overwrite,
                               save_dtype=job.output.save_dtype, allocation=job.allocation, group=job.group,
                               model_label=str(settings.model), report_extra={"defaults": settings.defaults})
    if job.group is not None and not job.group.is_main:
        return None
    if job.format.single_file:
        path, message = job.format.finish_streamed(streamed.out, job.output, streamed.report)
        return Outcome(streamed.result, streamed.report, {}, {}, path, message, streamed.resumed_from)
    return Outcome(streamed.result, streamed.report, {}, {}, streamed.out,
                   f"saved to {streamed.out} ({streamed.report['saved_dtype']})", streamed.resumed_from)


def _check_streamed(settings: Settings) -> None:
    output = settings.output
    if settings.model is None or output.path is None or not get_format(output.format).streams:
        raise PrunellmError("--stream reads a safetensors model directory and writes one (or a .gguf): give MODEL "
                            f"and --out (no --format {output.format}: convert the result with "
                            "`prunellm export OUT --to ...`)")
    if settings.evaluation.datasets:
        raise PrunellmError("--stream never holds the whole model, so it cannot evaluate it: drop --eval and run "
                            "`prunellm eval OUT` afterwards")


def _check_output_path(output: OutputSpec, fmt: OutputFormat) -> None:
    """Fail before a long job, rather than after it, if the output cannot be written."""
    from .io import check_output_dir

    if fmt.single_file:
        check_output_file(output.path, output.overwrite)
    else:
        check_output_dir(output.path, output.overwrite)


def check_output_file(path: str | Path, overwrite: bool) -> None:
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise PrunellmError(f"output file already exists: {out} (use --overwrite to replace it)")
    if out.is_dir():
        raise PrunellmError(f"output path is a directory: {out}")


def export(directory: str | Path, output: OutputSpec) -> tuple[Path, str]:
    """Convert a directory written by `prunellm prune --out` to output.format; returns the path
    and the line that says what was written. output.path None: beside the directory."""
    directory = Path(directory).expanduser()
    fmt = get_format(output.format)
    if output.gguf_type is not None and not fmt.single_file:
        raise PrunellmError(f"--type only applies with --to gguf, not --to {output.format}")
    if output.path is None:
        output = dataclasses.replace(output, path=fmt.default_export_path(directory, output))
    if fmt.single_file:
        check_output_file(output.path, output.overwrite)
    return fmt.export(directory, output)

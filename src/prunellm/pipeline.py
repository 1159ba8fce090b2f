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
fills nothing. For a 4- or 8-bit run they fill the grid (W4A16's or W8A16's, its group size
fitted to the model's layers once it is loaded: `fit_to_model`). The report records the
resolved method, which defaults applied and what they filled in.

`Settings.scheme` ("W4A16", ...; methods/schemes.py) fills the grid options the user left unset
from a named preset, and is recorded in the report. The output format, when the user names
none, follows formats/choice.py: a run that quantizes writes a packed checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .compression import (CalibrationConfig, EvalConfig, bos_for, build_report, check_layer_shapes, describe_model,
                          layer_inputs, perplexities, prune)
from .devices import resolve_device
from .distributed import Group
from .errors import PrunellmError
from .formats import FinishedRun, OutputFormat, OutputSpec, get_format
from .data.sources import describe_source
from .formats.choice import FormatChoice, fit_model, resolve_output
from .methods import Method, build_method, method_names, option_specs
from .methods.schemes import with_scheme
from .methods.recommended import recommended_grid, with_recommended
from .walker import AllocationConfig, WalkConfig, WalkResult, with_forward_dtype

DEFAULTS = ("recommended", "paper")
# The in-memory run's parts, re-exported: `from prunellm.pipeline import CalibrationConfig, prune`.
__all__ = ["DEFAULTS", "CalibrationConfig", "EvalConfig", "Job", "Outcome", "Settings", "bos_for", "build_report",
           "check_layer_shapes", "check_output_file", "describe_model", "export", "fit_to_model", "perplexities",
           "prepare", "prune", "resolve_method", "run", "settings_record"]


@dataclass(frozen=True)
class Settings:
    """A compression run as the user asked for it.

    method, options: a registered method and the options the user set (build_method's keywords;
    unset ones stay out, so that `defaults` can fill them). defaults: "recommended" or "paper"
    (see the module docstring). allocation: "uniform" or "owl" (None: from the defaults).
    stream: hold one block in memory at a time (a safetensors directory in, hf format out).
    scheme: a quantization preset (methods/schemes.py) under the options the user set."""

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
    scheme: str | None = None


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
    note: str | None  # what the recommended defaults filled in (run: fitted to the model); None: nothing
    group: Group | None = None
    format_choice: FormatChoice | None = None  # the format, and why when the user named none


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
                   allocation_unit: str = "block", can_allocate: bool = True, scheme: str | None = None,
                   layer_inputs: dict[str, int] | None = None) -> tuple[Method, AllocationConfig, str | None]:
    """(method, allocation, note): the method with the scheme's preset and the defaults applied
    to the options the user left unset. Bad options fail here, before any loading.
    layer_inputs: the in_features of the layers the run compresses (`compression.layer_inputs`),
    once the model is known: the recommended grid's group size fits them."""
    if defaults not in DEFAULTS:
        raise PrunellmError(f"unknown defaults {defaults!r}: choose {' or '.join(DEFAULTS)}")
    if scheme is not None:
        if name not in method_names():
            build_method(name)  # the registry's one line for an unknown method
        takes = {option for option, spec in option_specs().items() if name in spec.defaults}
        options = with_scheme(scheme, options, takes)
    note = None
    if defaults == "recommended":
        options, allocation, owl_lambda, note = with_recommended(name, options, allocation, owl_lambda,
                                                                 can_allocate=can_allocate, layer_inputs=layer_inputs)
    method = build_method(name, **options)
    allocation_config = AllocationConfig(allocation or "uniform", *([] if owl_lambda is None else [owl_lambda]),
                                         owl_threshold=owl_threshold, unit=allocation_unit)
    return method, allocation_config, note


def prepare(settings: Settings, group: Group | None = None) -> Job:
    """Check and resolve `settings` before any model is loaded. group: one of several
    processes under torchrun (prunellm.distributed), else None."""
    from .data import load_eval_text
    from .io.load import resolve_dtype

    method, allocation, note = _resolve(settings)
    device = group.device if group is not None else resolve_device(settings.walk.device)
    compute_dtype = resolve_dtype(settings.dtype, device)
    # --forward-dtype auto follows this machine's CPU: pinned here, so that the report and a replay
    # (recipe.py) on another CPU run the same forwards
    model_dtype = compute_dtype if isinstance(compute_dtype, torch.dtype) else None
    settings = dataclasses.replace(settings, walk=with_forward_dtype(settings.walk, device, model_dtype))
    output, choice = resolve_output(settings.output, method, stream=settings.stream)
    fmt = get_format(output.format)
    output = fmt.check(output, method, settings.model, compute_dtype)
    if settings.stream:
        _check_streamed(settings, output)
    if output.path is not None:
        _check_output_path(output, fmt)
    settings.calibration.check()  # a missing calibration file must not wait for the model to load
    for name in settings.evaluation.datasets:  # a typo in --eval must not wait for the end of a long prune
        load_eval_text(name, data_dir=settings.calibration.data_dir)
    return Job(settings, method, allocation, output, fmt, device, compute_dtype, note, group, choice)


def _resolve(settings: Settings, layer_inputs: dict[str, int] | None = None
             ) -> tuple[Method, AllocationConfig, str | None]:
    return resolve_method(
        settings.method, dict(settings.options), defaults=settings.defaults, allocation=settings.allocation,
        owl_lambda=settings.owl_lambda, owl_threshold=settings.owl_threshold,
        allocation_unit=settings.allocation_unit, can_allocate=not settings.stream, scheme=settings.scheme,
        layer_inputs=layer_inputs)


def _waits_for_model(settings: Settings) -> bool:
    """Whether the method depends on the model's layers: the recommended grid's group size."""
    return settings.defaults == "recommended" and settings.scheme is None and \
        recommended_grid(settings.method, settings.options) is not None


def fit_to_model(job: Job, model: torch.nn.Module) -> None:
    """Resolve the job's method again with the layers of `model` (a loaded model or a streamed
    run's skeleton) known: the recommended grid's group size becomes the largest that divides
    them all (methods/recommended.py), and the note says which. Nothing else changes."""
    if _waits_for_model(job.settings):
        job.method, job.allocation, job.note = _resolve(job.settings, layer_inputs(model, job.settings.walk))


def run(job: Job, command: list[str] | None = None) -> Outcome | None:
    """Load, compress, evaluate and write the job. Returns None in a process other than the
    first of a group (every process ends with the same model; the first evaluates and saves).
    command: the command line that asked for the run, recorded in the report beside the
    resolved settings (`settings_record`) that replay it. The method's grid is fitted to the
    model first (`fit_to_model`): job.method and job.note may change."""
    if job.settings.stream:
        return _run_streamed(job, command)
    from .formats import load_model
    from .io.default_model import gguf_file, model_label
    from .io.dtypes import round_weights

    settings, group = job.settings, job.group
    model, tokenizer = load_model(settings.model, dtype=settings.dtype, compute_device=job.device)
    fit_to_model(job, model)
    method, provenance = job.method, _provenance(job, command)
    choice = job.format_choice or FormatChoice(job.format.name)
    job.format, job.output, job.format_choice = fit_model(job.format, choice, job.output, model, method, settings.walk)
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
    report.update(provenance)  # with "method" (resolved): what ran, why, and how to run it again
    source_file = gguf_file(settings.model)
    if source_file is not None:
        report["model"]["gguf_file"] = source_file
    outcome = Outcome(result, report, dense, compressed)
    if job.output.path is not None:
        finished = FinishedRun(model, tokenizer, result, method, report, settings.model,
                               extra={"saved_dtype": written})
        outcome.path, outcome.message = job.format.write(job.output, finished)
        outcome.message = closing_lines(job, outcome.path, outcome.message)
    return outcome


def closing_lines(job: Job, path: Path, message: str) -> str:
    """What was written, in which format and why (when the user named none), and what loads it."""
    lines = [message]
    choice = job.format_choice
    if choice is not None and choice.by_default:
        other = "" if job.settings.stream else "; --format to choose another"  # --stream writes hf only
        lines.append(f"format: {job.format.name} ({choice.reason}{other})")
    lines.append(job.format.how_to_load(path))
    return "\n".join(lines)


def _run_streamed(job: Job, command: list[str] | None) -> Outcome | None:
    from .io.lazy import LazyCheckpoint
    from .io.skeleton import build_skeleton
    from .streaming import prune_streaming

    settings = job.settings
    if _waits_for_model(settings):  # the layers' shapes, from a meta-device skeleton: no weights read
        fit_to_model(job, build_skeleton(LazyCheckpoint(settings.model), job.compute_dtype).model)
    provenance = _provenance(job, command)
    # A single-file format (GGUF) streams into a directory beside its file, then converts it.
    directory = job.format.streamed_directory(job.output)
    streamed = prune_streaming(settings.model, directory, job.method, settings.calibration, settings.walk,
                               dtype=settings.dtype, overwrite=job.output.overwrite,
                               save_dtype=job.output.save_dtype, allocation=job.allocation, group=job.group,
                               model_label=str(settings.model), report_extra=provenance)
    if job.group is not None and not job.group.is_main:
        return None
    if job.format.single_file:
        path, message = job.format.finish_streamed(streamed.out, job.output, streamed.report)
    else:
        path, message = streamed.out, f"saved to {streamed.out} ({streamed.report['saved_dtype']})"
    return Outcome(streamed.result, streamed.report, {}, {}, path, closing_lines(job, path, message),
                   streamed.resumed_from)


def _provenance(job: Job, command: list[str] | None) -> dict[str, Any]:
    """What the report records beside the resolved method: the defaults (and what they filled
    in), the scheme, the settings that replay the run and the command line that asked for it."""
    settings = job.settings
    extra: dict[str, Any] = {"defaults": settings.defaults}
    if job.note is not None:
        extra["recommended_defaults"] = job.note
    if settings.scheme is not None:
        extra["scheme"] = settings.scheme.upper()
    return {**extra, "settings": settings_record(job), "command": command}


def settings_record(job: Job) -> dict[str, Any]:
    """The job's settings as plain JSON, as `prepare` resolved them: every method option (the
    recommended defaults' choices written out) and the allocation, so that a replay
    (`prunellm prune --recipe report.json`, prunellm/recipe.py) builds the same method even
    where a later version recommends otherwise. Local paths are made absolute: a replay from
    another directory reads the same files."""
    settings, allocation = job.settings, job.allocation
    # The device the run chose ("CUDA when present"), pinned: a replay on a machine whose default
    # differs computes on the same kind of device, or says it has none.
    device = settings.walk.device or (job.device.type if job.group is None else None)
    # Data given in memory (strings, a Dataset, token tensors) is recorded by size and hash, as
    # report.json's calibration says: such a run replays only with the data given again.
    source = settings.calibration.source
    source = _absolute(source) if isinstance(source, (str, Path)) else describe_source(source)
    resolved = dataclasses.replace(
        settings, model=_absolute(settings.model), options=job.method.config.as_dict(), allocation=allocation.kind,
        owl_lambda=allocation.owl_lambda, owl_threshold=allocation.owl_threshold, allocation_unit=allocation.unit,
        calibration=dataclasses.replace(settings.calibration, source=source,
                                        data_dir=_absolute(settings.calibration.data_dir)),
        walk=dataclasses.replace(settings.walk, device=device),
        evaluation=dataclasses.replace(settings.evaluation,
                                       datasets=tuple(_absolute(name) for name in settings.evaluation.datasets)))
    return dataclasses.asdict(resolved)


def _absolute(value: str | None) -> str | None:
    """A path that exists here, absolute; a hub id or dataset name (wikitext2) as it is."""
    if value is None or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def _check_streamed(settings: Settings, output: OutputSpec) -> None:
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
    if output.format is None:
        raise PrunellmError("export needs a target format (--to)")
    fmt = get_format(output.format)
    if output.gguf_type is not None and not fmt.single_file:
        raise PrunellmError(f"--type only applies with --to gguf, not --to {output.format}")
    if output.path is None:
        output = dataclasses.replace(output, path=fmt.default_export_path(directory, output))
    if fmt.single_file:
        check_output_file(output.path, output.overwrite)
    path, message = fmt.export(directory, output)
    return path, f"{message}\n{fmt.how_to_load(path)}"

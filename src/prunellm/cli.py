"""`prunellm`: parse arguments into settings and call the public API (pipeline, formats). No policy here:
what the defaults are and which format writes what is decided below the CLI."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .errors import PrunellmError
from .logs import RunLog, add_logging_options, configured

REPORT_EVERY_S = 30.0  # a sweep's report is redrawn at most this often while it runs
EPILOG = "Data: local files under --data-dir or $PRUNELLM_DATA_DIR first, the `datasets` library when online."


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default after its help, where the default says something (not None, off
    or empty) and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default in ((), []) or default is argparse.SUPPRESS):
            return text
        shown = ",".join(default) if isinstance(default, (tuple, list)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _group(parser: argparse.ArgumentParser, title: str) -> Any:
    """The parser's argument group of that title, made if it has none."""
    found = next((group for group in parser._action_groups if group.title == title), None)
    return found if found is not None else parser.add_argument_group(title)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    model = _group(parser, "model")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    model.add_argument("--dtype", default="auto",
                       help="auto (float32 when computing on CPU, else the checkpoint's), float32, float16, bfloat16")
    _group(parser, "calibration").add_argument("--data-dir", default=None,
                                               help="local data directory (default: $PRUNELLM_DATA_DIR)")
    evaluation = _group(parser, "evaluation")
    evaluation.add_argument("--eval-tokens", type=int, default=None, help="score only the first N tokens of each text")
    evaluation.add_argument("--eval-batch-size", type=int, default=1, help="evaluation windows per forward")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib", default="wikitext2",
                       help="wikitext2, ptb, c4, a local file (.txt, .jsonl/.json, .csv, .parquet), a dataset "
                            "directory (save_to_disk) or a Hugging Face dataset id (owner/name)")
    group.add_argument("--calib-config", default=None, help="the dataset's config (subset) name")
    group.add_argument("--calib-split", default=None,
                       help="the corpus's or dataset's split (default: train; a hub id takes slices: train[:2000])")
    group.add_argument("--calib-column", default=None,
                       help="the column to calibrate on (default: text, else messages: chat records through the "
                            "tokenizer's chat template)")
    group.add_argument("--num-samples", type=int, default=128, help="calibration windows")
    group.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window")
    group.add_argument("--seed", type=int, default=0, help="seed of the windows' draw")
    group.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")


def _add_walk_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("walk")
    group.add_argument("--true-sequential", action="store_true", help="compress a block's layers stage by stage")
    group.add_argument("--include", type=_csv, default=(), help="comma-separated layer name patterns to compress")
    group.add_argument("--exclude", type=_csv, default=(), help="comma-separated layer name patterns to skip")
    group.add_argument("--first-block", type=int, default=0, help="first block to compress")
    group.add_argument("--last-block", type=int, default=None, help="last block to compress (default: the last)")
    group.add_argument("--offload-activations", action="store_true", help="keep calibration activations on CPU")
    group.add_argument("--forward-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="the calibration forwards' products in this dtype (auto: bfloat16 on a CPU with bf16 "
                            "instructions, faster; else the model's); weights and solves keep the model's")
    group.add_argument("--no-layer-errors", action="store_true", help="skip per-layer error (and its Hessian)")


def walk_config(args: argparse.Namespace) -> Any:
    """The walker's options from the walk group's flags (and --device, --quiet)."""
    from .walker import WalkConfig

    return WalkConfig(device=args.device, true_sequential=args.true_sequential, include=args.include,
                      exclude=args.exclude, first_block=args.first_block, last_block=args.last_block,
                      batch_size=args.batch_size, offload_activations=args.offload_activations,
                      layer_errors=not args.no_layer_errors, progress=not args.quiet, forward_dtype=args.forward_dtype)


def calibration_config(args: argparse.Namespace) -> Any:
    from .compression import CalibrationConfig

    return CalibrationConfig(args.calib, args.num_samples, args.seqlen, args.seed, args.data_dir,
                             config_name=args.calib_config, split=args.calib_split, column=args.calib_column)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """--method and every method's options, built from the methods' configs: a new method's
    options need no edit here."""
    from .methods import method_names, option_specs
    from .methods.schemes import scheme_names

    group = parser.add_argument_group("method")
    group.add_argument("--method", default="sparsegpt", help=", ".join(method_names()))
    for spec in option_specs().values():
        if spec.flag is None:
            continue  # fed by another flag (gguf: --gguf-type) or for the Python API only
        takes = f" [{', '.join(spec.methods)}]"
        if spec.type is bool:  # --sym and --no-sym: a flag given either way wins over a --scheme preset
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, default=None, help=spec.help + takes)
        else:
            group.add_argument(spec.flag, type=spec.type, default=None, choices=spec.choices, help=spec.help + takes)
    group.add_argument("--scheme", default=None, type=str.upper, choices=scheme_names(),
                       help="quantization preset as llm-compressor names it (W4A16: 4-bit symmetric, groups of 128, "
                            "act-order); flags given explicitly win. Default: see --defaults")
    group.add_argument("--defaults", default="recommended", choices=("recommended", "paper"),
                       help="recommended: options left unset come from methods/recommended.py (SparseGPT without "
                            "quantization: --refine alps; 4 and 8 bits with no grid option set: W4A16's or W8A16's "
                            "grid, groups of 128 or the largest of 64, 32 that divides the layers); paper: the "
                            "methods as published (per-row asymmetric grid)")
    group.add_argument("--allocation", default=None,
                       help="uniform or owl: sparsity per block by outliers (default: uniform)")
    group.add_argument("--owl-lambda", type=float, default=None,
                       help="OWL: spread of the per-unit sparsities (default 0.08)")
    group.add_argument("--owl-threshold", type=float, default=5.0, help="OWL: outliers are scores above M x mean")
    group.add_argument("--allocation-unit", default="block", help="block or layer: the unit OWL allocates to")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user gave: each method refuses those it does not take."""
    from .formats.gguf.export import FLOAT_TYPES
    from .methods import option_specs

    options = {name: getattr(args, name) for name, spec in option_specs().items()
               if spec.flag is not None and getattr(args, name) is not None}
    gguf_type = getattr(args, "gguf_type", None)
    if gguf_type is not None and gguf_type.lower() not in FLOAT_TYPES:
        options["gguf"] = gguf_type.lower()  # quantized in the solver, onto the type's exact grid
    return options


def build_parser() -> argparse.ArgumentParser:
    from .formats import format_names, get_format
    from .io.versions import package_version

    parser = argparse.ArgumentParser(prog="prunellm", description="One-shot pruning and quantization of causal LMs.",
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunellm {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="compress a model", epilog=EPILOG)
    prune.add_argument("--recipe", default=None,
                       help="replay a run: the settings of a report.json (or its directory), or of a YAML or JSON "
                            "file of the same settings; flags given beside it override the recipe's values")
    _group(prune, "model").add_argument(
        "model", nargs="?", default=None,
        help="hub id, local HF directory or .gguf file (default: the bundled SmolLM2-135M)")
    _add_method_options(prune)
    _add_calibration_options(prune)
    _add_walk_options(prune)
    evaluation = prune.add_argument_group("evaluation")
    evaluation.add_argument("--eval", type=_csv, default=(), help="perplexity texts, e.g. wikitext2,ptb")
    evaluation.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default: --seqlen)")
    evaluation.add_argument("--no-dense-eval", action="store_true", help="do not evaluate the model before compression")
    output = prune.add_argument_group("output")
    output.add_argument("--format", default=None, choices=format_names(),
                        help="; ".join(f"{name}: {get_format(name).summary}" for name in format_names())
                        + ". Default: compressed-tensors for a quantization-only run, compressed for a sparse and "
                          "quantized one, else hf")
    output.add_argument("--gguf-type", default=None,
                        help="quantize onto a GGUF block type: q4_0, q4_1, q5_0, q5_1, q8_0, q3_k, q4_k, q5_k, "
                             "q6_k, q3_k_m, q4_k_m, q5_k_m (with --format gguf also f16, bf16, f32: unquantized)")
    output.add_argument("--save-dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                        help="dtype of the saved weights. hf (auto): the source's for a sparse result, the compute "
                             "dtype for a quantized one; compressed (auto): float16 for a float32 model, else its own")
    output.add_argument("--gguf-other-type", default="keep",
                        help="GGUF: type of embeddings, head and uncompressed layers (keep = as in a .gguf source; "
                             "f16 from a Hugging Face model)")
    output.add_argument("--out", default=None,
                        help="output directory (hf, with report.json) or .gguf file (gguf, report beside it)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    output.add_argument("--stream", action="store_true",
                        help="hold one block in memory at a time: read it from the safetensors directory MODEL, "
                             "compress it, write it to --out; a killed run resumes where it stopped")
    _add_model_options(prune)

    export = commands.add_parser("export", help="convert a pruned model directory to GGUF or a serving format",
                                 epilog=EPILOG)
    export.add_argument("directory", help="a directory written by `prunellm prune --out`")
    export.add_argument("--to", default="gguf", choices=tuple(name for name in format_names() if name != "hf"),
                        help="target format")
    export.add_argument("--type", default=None,
                        help="gguf: type of the compressed layers: q4_0, q5_0, q8_0, q4_1, q5_1, q3_k, q4_k, q5_k, "
                             "q6_k, q3_k_m, q4_k_m, q5_k_m, f16, bf16, f32")
    export.add_argument("--save-dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                        help="compressed: dtype of stored values (auto: float16 for a float32 model)")
    export.add_argument("--other-type", default="keep", help="type of embeddings, head and other tensors")
    export.add_argument("--source", default=None,
                        help="the .gguf the model was loaded from (default: the one named in report.json)")
    export.add_argument("--out", default=None,
                        help="output .gguf file (default: DIRECTORY-TYPE.gguf) or directory (default: DIRECTORY-FORMAT)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    export.add_argument("--quiet", action="store_true", help="no progress output")

    gen = commands.add_parser("generate", help="generate text with a saved (compressed) model", epilog=EPILOG)
    gen.add_argument("model", help="a directory written by prunellm (any --format but gguf) or a Hugging Face one")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gen.add_argument("--seed", type=int, default=0)
    _add_runtime_options(gen)
    _add_own_loop_option(gen)

    infer = commands.add_parser("bench-infer", help="prefill and decode speed and memory, dense vs compressed",
                                epilog=EPILOG)
    infer.add_argument("model", help="a directory written by `prunellm prune --format compressed`")
    infer.add_argument("--prompt-tokens", type=int, default=128)
    infer.add_argument("--new-tokens", type=int, default=32)
    infer.add_argument("--batch-size", type=int, default=1, help="sequences decoded together (tokens per call)")
    infer.add_argument("--repeats", type=int, default=3, help="runs per variant; the fastest is reported")
    infer.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    _add_budget_option(infer)
    _add_head_bits_option(infer)
    _add_embed_bits_option(infer)
    _add_int8_option(infer)
    infer.add_argument("--cuda-graph", action="store_true",
                       help="replay each decode step from a captured CUDA graph (both variants): times the GPU's "
                            "work rather than Python's kernel launches")
    _add_own_loop_option(infer)
    infer.add_argument("--out", default=None, help="also write the rows to this JSON file")
    infer.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    infer.add_argument("--debug", action="store_true", help="show tracebacks")

    ev = commands.add_parser("eval", help="perplexity and zero-shot accuracy of a model", epilog=EPILOG)
    ev.add_argument("model", nargs="?", default=None,
                    help="hub id, .gguf file, or a directory in any format prunellm writes (default: SmolLM2-135M)")
    ev.add_argument("--datasets", type=_csv, default=None,
                    help="perplexity texts, e.g. wikitext2,ptb (default: wikitext2 unless --tasks is given)")
    ev.add_argument("--seqlen", type=int, default=2048, help="evaluation window")
    _add_task_options(ev)
    ev.add_argument("--out", default=None, help="also write the results to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_model_options(ev)

    sweep = commands.add_parser("sweep", help="compress at many settings, evaluate each, table and plots",
                                epilog=EPILOG)
    sweep.add_argument("model", nargs="?", default=None,
                       help="hub id, local HF directory or .gguf file (default: the bundled SmolLM2-135M)")
    grid = sweep.add_argument_group("grid")
    grid.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    grid.add_argument("--sparsities", default=None,
                      help="unstructured sparsities in (0, 1) (default 0.3,...,0.8 unless --nm is given)")
    grid.add_argument("--nm", default=None, help="n:m patterns, e.g. 2:4,4:8")
    grid.add_argument("--bits", default=None, help="quantize every setting: 4, or a list such as none,4")
    grid.add_argument("--group-size", type=int, default=None, help="inputs per quantization scale (with --bits)")
    grid.add_argument("--defaults", default="recommended", choices=("recommended", "paper"),
                      help="as for prune: recommended fills unset options from methods/recommended.py; paper runs "
                           "the methods as published")
    _add_calibration_options(sweep)
    evaluation = sweep.add_argument_group("evaluation")
    evaluation.add_argument("--eval", type=_csv, default=("wikitext2",), help="perplexity texts, e.g. wikitext2,ptb")
    evaluation.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default: --seqlen)")
    _add_task_options(sweep)
    _add_walk_options(sweep)
    output = sweep.add_argument_group("output")
    output.add_argument("--save-models", action="store_true", help="also save every compressed model under models/")
    output.add_argument("--out", required=True, help="directory for results.csv, results.json, plots/, report")
    output.add_argument("--resume", action="store_true", help="finish a sweep cut short: keep its rows, run the rest")
    output.add_argument("--overwrite", action="store_true", help="replace a previous sweep in --out")
    _add_model_options(sweep)

    report = commands.add_parser("report", help="render a sweep or prune run as HTML and Markdown", epilog=EPILOG)
    report.add_argument("run", help="a `prunellm sweep` directory, a `prunellm prune --out` directory, or its JSON")
    report.add_argument("--out", default=None, help="directory for report.html, report.md, plots/ (default: RUN)")
    report.add_argument("--quiet", action="store_true", help="print nothing but errors")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    for command in commands.choices.values():
        command.formatter_class = HelpFormatter
        add_logging_options(command)
    return parser


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--keep-compressed", action=argparse.BooleanOptionalAction, default=None,
                        help="hold every compressed layer compressed, read by a kernel at decode or expanded per "
                             "call (default: the layers a kernel reads, the native CPU library or Triton on a GPU; "
                             "--no-keep-compressed: every layer expanded at load)")
    _add_budget_option(parser)
    _add_head_bits_option(parser)
    _add_embed_bits_option(parser)
    _add_int8_option(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_own_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--own-loop", action=argparse.BooleanOptionalAction, default=True,
                        help="on a CPU, decode Llama and Qwen2 models on prunellm's own loop (static cache, "
                             "one token's attention as plain products); --no-own-loop: Hugging Face's")


def _add_head_bits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head-bits", type=int, choices=(8, 4), default=None,
                        help="quantize the output head (round-to-nearest, groups of 128 inputs) for the native CPU "
                             "kernels at decode; a tied head is untied (CPU only)")


def _add_embed_bits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embed-bits", type=int, choices=(8, 4), default=None,
                        help="quantize the input embeddings' table (memory, not speed; rows expanded as read); "
                             "with a tied head and the same --head-bits the two share one table (CPU only)")


def _add_int8_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--int8-activations", action="store_true",
                        help="round the activations of 4- and 8-bit layers (and a --head-bits head) to int8 and "
                             "multiply the codes as they are: faster decode, not exact (CPU only)")


def _add_budget_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dense-budget-gib", type=float, default=None,
                        help="with --keep-compressed: GiB of memory for layers expanded once at load (the first "
                             "ones that fit); the rest are expanded per call")


def _budget_bytes(args: argparse.Namespace) -> int | None:
    if args.dense_budget_gib is None:
        return None
    if not args.dense_budget_gib >= 0:
        raise PrunellmError(f"--dense-budget-gib must be >= 0, got {args.dense_budget_gib}")
    return int(args.dense_budget_gib * 2**30)


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zero-shot tasks")
    group.add_argument("--tasks", type=_csv, default=(),
                       help="lm-eval zero-shot tasks, e.g. prunellm_basics (offline) or arc_easy,piqa (online)")
    group.add_argument("--task-dir", action="append", default=[],
                       help="directory of lm-eval YAML task files (local JSON/JSONL data); repeatable")
    group.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    group.add_argument("--limit", type=int, default=None, help="score only the first N items per task (checks only)")
    group.add_argument("--task-batch-size", type=int, default=16, help="lm-eval requests per forward")


def prune_settings(args: argparse.Namespace) -> Any:
    """The prune command's flags as pipeline settings."""
    from .compression import EvalConfig
    from .formats import OutputSpec
    from .pipeline import Settings

    return Settings(
        model=args.model, method=args.method, options=method_options(args), defaults=args.defaults,
        allocation=args.allocation, owl_lambda=args.owl_lambda, owl_threshold=args.owl_threshold,
        allocation_unit=args.allocation_unit, calibration=calibration_config(args), walk=walk_config(args),
        evaluation=EvalConfig(args.eval, args.eval_seqlen, args.eval_tokens, args.eval_batch_size,
                              dense=not args.no_dense_eval),
        output=OutputSpec(args.format, args.out, args.overwrite, args.save_dtype, args.gguf_type,
                          args.gguf_other_type),
        dtype=args.dtype, stream=args.stream, scheme=args.scheme)


def run_prune(args: argparse.Namespace) -> None:
    from . import pipeline
    from .distributed import init_from_env

    settings = prune_settings(args)
    if args.recipe is not None:
        from .recipe import given_flags, replay_settings

        settings = replay_settings(args.recipe, settings, given_flags(build_parser(), args.argv))
    group = init_from_env(settings.walk.device)  # one of several processes under torchrun, else None
    job = pipeline.prepare(settings, group)
    note = job.note
    if note is not None:
        print(note)
    outcome = _run_job(job, ["prunellm", *args.argv])
    if group is not None:
        group.leave()
    if outcome is None:
        return  # not the first process: it evaluates and saves
    if job.note != note:  # the recommended grid fitted to the model's layers once it was loaded
        print(job.note)
    result, name = outcome.result, job.method.name
    sparsity = f"sparsity {outcome.report['sparsity']['compressed_layers']:.2%}"
    if job.settings.stream:
        resumed = f", resumed at block {outcome.resumed_from}" if outcome.resumed_from is not None else ""
        print(f"{name}: {len(result.layers)} layers, {sparsity}, {result.seconds['total']:.1f} s{resumed}")
    else:
        print(f"{name}: {len(result.layers)} layers, {sparsity}, {result.seconds['total']:.1f} s "
              f"(solver {result.seconds['solve']:.1f} s)")
    for text in job.settings.evaluation.datasets:
        before = f"dense {outcome.dense[text]:.3f} -> " if text in outcome.dense else ""
        print(f"{text} perplexity: {before}{name} {outcome.compressed[text]:.3f}")
    if outcome.message is not None:
        print(outcome.message)


def _run_job(job: Any, command: list[str]) -> Any:
    """pipeline.run, and with an output: its log file and model card beside its report (the
    first process of a group only, as it alone writes)."""
    from . import pipeline

    if job.output.path is None or (job.group is not None and not job.group.is_main):
        return pipeline.run(job, command)
    from .io.versions import package_version
    from .streaming.resume import RunState

    resume_dir = RunState(job.output.path).root if job.settings.stream else None
    with RunLog(job.output.path, single_file=job.format.single_file, resume_dir=resume_dir,
                header=f"prunellm {package_version()}: {shlex.join(command)}") as run_log:
        outcome = pipeline.run(job, command)
        if outcome is not None and outcome.path is not None:
            _write_card(outcome.path, job.format.name)
            run_log.place()
    return outcome


def run_export(args: argparse.Namespace) -> None:
    from .formats import OutputSpec
    from .pipeline import export

    output = OutputSpec(args.to, args.out, args.overwrite, args.save_dtype, args.type, args.other_type, args.source)
    path, message = export(args.directory, output)
    _write_card(path, args.to)
    print(message)


def _write_card(path: Path, fmt: str) -> None:
    """A model card (README.md) in an output directory; a GGUF output is one file, with no
    directory to hold one (its report is FILE.report.json)."""
    from .report.card import write_card

    if Path(path).is_dir():
        write_card(path, fmt)


def run_generate(args: argparse.Namespace) -> None:
    from .io import load_tokenizer
    from .runtime.generate import generate_text
    from .runtime.load import load

    tokenizer = load_tokenizer(args.model)
    model = load(args.model, args.device, keep_compressed=args.keep_compressed, dense_budget=_budget_bytes(args),
                 head_bits=args.head_bits, embed_bits=args.embed_bits, int8_activations=args.int8_activations)
    generation = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed, own_loop=args.own_loop)
    print(args.prompt + generation.text)
    print(f"{generation.new_tokens} tokens in {generation.seconds:.2f} s ({generation.tokens_per_second:.1f} tokens/s)",
          file=sys.stderr)


def run_bench_infer(args: argparse.Namespace) -> None:
    from .devices import resolve_device
    from .formats import detect_format
    from .io import write_json_atomic
    from .pipeline import check_output_file
    from .runtime.bench_infer import InferConfig, compare, format_rows, machine_description

    fmt = detect_format(args.model)
    if fmt is None or fmt.name != "compressed":
        raise PrunellmError(f"{args.model} is not a compressed directory (write one with --format compressed)")
    for name in ("prompt_tokens", "new_tokens", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise PrunellmError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cuda_graph and resolve_device(args.device).type != "cuda":
        raise PrunellmError("--cuda-graph needs a CUDA device")
    if args.head_bits is not None:
        from .runtime.head import check_head_bits

        check_head_bits(args.head_bits, resolve_device(args.device))
    if args.embed_bits is not None:
        from .runtime.embedding import check_embed_bits

        check_embed_bits(args.embed_bits, resolve_device(args.device))
    if args.int8_activations and resolve_device(args.device).type != "cpu":
        raise PrunellmError(f"--int8-activations is for the native CPU kernels; the device is "
                            f"{resolve_device(args.device)}")
    if args.out is not None:
        check_output_file(args.out, args.overwrite)
    config = InferConfig(args.prompt_tokens, args.new_tokens, args.batch_size, args.repeats, args.device,
                         dense_budget=_budget_bytes(args), cuda_graph=args.cuda_graph, head_bits=args.head_bits,
                         embed_bits=args.embed_bits, int8_activations=args.int8_activations,
                         own_loop=args.own_loop)
    rows = compare(args.model, config)
    print(format_rows(rows))
    if args.out is not None:
        write_json_atomic(args.out, {"model": str(args.model), "machine": machine_description(args.device),
                                     "rows": rows})
        print(f"saved to {args.out}")


def _task_suite(args: argparse.Namespace) -> Any:
    """The zero-shot tasks, resolved (unknown names refused) before any model is loaded; or None."""
    from .eval.zero_shot import TaskSuite, ZeroShotConfig

    if not args.tasks:
        return None
    return TaskSuite.load(ZeroShotConfig(tuple(args.tasks), tuple(args.task_dir), args.num_fewshot, args.limit,
                                         args.task_batch_size))


def run_eval(args: argparse.Namespace) -> None:
    from .compression import EvalConfig, bos_for, perplexities
    from .data import load_eval_text
    from .devices import resolve_device
    from .eval.table import eval_record, format_scores
    from .formats import load_model
    from .io import write_json_atomic
    from .io.default_model import model_label
    from .pipeline import check_output_file

    datasets = args.datasets if args.datasets is not None else (() if args.tasks else ("wikitext2",))
    for name in datasets:
        load_eval_text(name, data_dir=args.data_dir)
    suite = _task_suite(args)
    if args.out is not None:
        check_output_file(args.out, args.overwrite)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, dtype=args.dtype, compute_device=device)
    evaluation = EvalConfig(datasets, args.seqlen, args.eval_tokens, args.eval_batch_size)
    results = perplexities(model, tokenizer, evaluation, default_seqlen=args.seqlen, data_dir=args.data_dir,
                           device=device, progress=not args.quiet)
    for name, value in results.items():
        print(f"{name} perplexity: {value:.3f}")
    scores = {}
    if suite is not None:
        scores = suite.evaluate(model, tokenizer, device=device, bos_token_id=bos_for(model, tokenizer))
        print(format_scores(scores))
    if args.out is not None:
        write_json_atomic(args.out, eval_record(model_label(args.model), evaluation, results, suite, scores))
        print(f"saved to {args.out}")


def run_sweep(args: argparse.Namespace) -> None:
    from .compression import EvalConfig
    from .data import load_eval_text
    from .devices import resolve_device
    from .eval.zero_shot import ZeroShotConfig
    from .formats import load_model
    from .io.default_model import gguf_file, model_label
    from .sweep import Sweep, SweepConfig, describe_row, parse_grid, prepare_output

    settings = parse_grid(args.methods, args.sparsities, args.nm, args.bits, args.group_size)
    config = SweepConfig(
        calibration=calibration_config(args),
        evaluation=EvalConfig(args.eval, args.eval_seqlen, args.eval_tokens, args.eval_batch_size),
        zero_shot=ZeroShotConfig(tuple(args.tasks), tuple(args.task_dir), args.num_fewshot, args.limit,
                                 args.task_batch_size) if args.tasks else None,
        walk=walk_config(args), save_models=args.save_models, defaults=args.defaults)
    prepare_output(args.out, resume=args.resume, overwrite=args.overwrite)  # before loading anything
    config.calibration.check()
    for name in config.evaluation.datasets:
        load_eval_text(name, data_dir=args.data_dir)
    suite = _task_suite(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, compute_device=resolve_device(args.device))
    sweep = Sweep(model, tokenizer, settings, config, args.out, suite=suite, resume=args.resume,
                  overwrite=args.overwrite, gguf_file=gguf_file(args.model), model_source=model_label(args.model))
    # The report and its plots follow the rows, at most every REPORT_EVERY_S (drawing them takes
    # about a second, a tiny model's setting less), and always after the last row or when the
    # sweep is cut short: a sweep stopped by Ctrl-C or an error keeps its figures.
    written, pending, files = float("-inf"), False, None
    try:
        for index, row in enumerate(sweep.run()):
            print(f"[{index}/{len(settings)}] {describe_row(row)}", flush=True)
            pending = True
            if time.monotonic() - written >= REPORT_EVERY_S:
                files, written, pending = _write_report(args.out), time.monotonic(), False
            if args.save_models:  # each saved setting gets its model card once
                from .report.card import CARD_FILE

                for report in sorted(Path(args.out).glob("models/*/report.json")):
                    if not (report.parent / CARD_FILE).exists():
                        _write_card(report.parent, "hf")
    except BaseException:
        if pending:
            with contextlib.suppress(Exception):  # the reason the sweep stopped is what the user must see
                _write_report(args.out)
        raise
    if pending or files is None:
        files = _write_report(args.out)
    print(f"results: {Path(args.out) / 'results.csv'}; report: {files.html}")


def _write_report(run: str, out: str | None = None) -> Any:
    from .report import write_report

    return write_report(run, out)


def run_report(args: argparse.Namespace) -> None:
    files = _write_report(args.run, args.out)
    if not args.quiet:
        print(f"saved {files.html} and {files.markdown} ({len(files.figures)} figures)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # report.json records the command line; --recipe reads which flags it gives
    if getattr(args, "quiet", False) and args.command != "report":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with configured(args.verbose, args.log_level):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        {"prune": run_prune, "eval": run_eval, "export": run_export, "sweep": run_sweep, "report": run_report,
         "generate": run_generate, "bench-infer": run_bench_infer}[args.command](args)
    except PrunellmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment problem: one line, the traceback on --debug
        if args.debug:
            raise
        print(f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`prunellm`: parse arguments, build configs, call the public API. No logic here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import PrunellmError

EPILOG = "Data: local files under --data-dir or $PRUNELLM_DATA_DIR first, the `datasets` library when online."


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--dtype", default="auto",
                        help="auto (float32 when computing on CPU, else the checkpoint's), float32, float16, bfloat16")
    parser.add_argument("--data-dir", default=None, help="local data directory (default: $PRUNELLM_DATA_DIR)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="score only the first N tokens of each text")
    parser.add_argument("--eval-batch-size", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunellm", description="One-shot pruning and quantization of causal LMs.",
                                     epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="compress a model", epilog=EPILOG)
    prune.add_argument("model", nargs="?", default=None,
                       help="hub id, local HF directory or .gguf file (default: the bundled SmolLM2-135M)")
    prune.add_argument("--method", default="sparsegpt", help="sparsegpt, gptq, wanda, magnitude, noop")
    prune.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero (default 0.5)")
    prune.add_argument("--nm", default=None, help="n:m pattern, e.g. 2:4 (n zeros in every m inputs)")
    prune.add_argument("--bits", type=int, default=None, help="quantize to 2-8 bits (GPTQ grid)")
    prune.add_argument("--group-size", type=int, default=None, help="inputs per quantization scale (default: per row)")
    prune.add_argument("--sym", action="store_true", default=None, help="symmetric quantization grid")
    prune.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                       help="GPTQ: quantize columns by decreasing Hessian diagonal (default on)")
    prune.add_argument("--per-row", action="store_true", default=None, help="magnitude: compare within rows")
    prune.add_argument("--hessian-shrink", type=float, default=None,
                       help="GPTQ: quantize with (1-a)*H + a*diag(H), a in [0, 1] (default 0; 0.5 wins with small "
                            "calibration sets, see bench/README.md)")
    prune.add_argument("--block-size", type=int, default=None, help="columns per lazy-update block (default 128)")
    prune.add_argument("--damp-frac", type=float, default=None, help="Hessian damping, fraction of mean diagonal")
    prune.add_argument("--refine", default=None,
                       help="none, lsq (re-solve the weights exactly on the mask) or alps (search a better mask by "
                            "ADMM, then lsq); default for sparsegpt: the best of bench/README.md's high-sparsity "
                            "table at the target sparsity, else none")
    prune.add_argument("--refine-iters", type=int, default=None, help="conjugate-gradient iterations (default 50)")
    prune.add_argument("--allocation", default=None,
                       help="uniform or owl: sparsity per block by outliers (default as --refine: from the table)")
    prune.add_argument("--owl-lambda", type=float, default=None,
                       help="OWL: spread of the per-unit sparsities (default: the table's, else 0.08)")
    prune.add_argument("--owl-threshold", type=float, default=5.0, help="OWL: outliers are scores above M x mean")
    prune.add_argument("--allocation-unit", default="block", help="block or layer: the unit OWL allocates to")
    prune.add_argument("--calib", default="wikitext2", help="wikitext2, ptb, c4 or a local .txt/.jsonl file")
    prune.add_argument("--num-samples", type=int, default=128)
    prune.add_argument("--seqlen", type=int, default=2048)
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")
    prune.add_argument("--true-sequential", action="store_true", help="compress a block's layers stage by stage")
    prune.add_argument("--include", type=_csv, default=(), help="comma-separated layer name patterns to compress")
    prune.add_argument("--exclude", type=_csv, default=(), help="comma-separated layer name patterns to skip")
    prune.add_argument("--first-block", type=int, default=0)
    prune.add_argument("--last-block", type=int, default=None)
    prune.add_argument("--offload-activations", action="store_true", help="keep calibration activations on CPU")
    prune.add_argument("--forward-dtype", choices=("bfloat16", "float16"), default=None,
                       help="run the calibration forwards' products in this dtype (bfloat16: forwards ~1.5x "
                            "faster on CPUs with bf16 instructions); weights and solves keep the model's")
    prune.add_argument("--no-layer-errors", action="store_true", help="skip per-layer error (and its Hessian)")
    prune.add_argument("--eval", type=_csv, default=(), help="perplexity texts, e.g. wikitext2,ptb")
    prune.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default: --seqlen)")
    prune.add_argument("--no-dense-eval", action="store_true", help="do not evaluate the model before compression")
    prune.add_argument("--gguf-type", default=None,
                       help="quantize onto a GGUF block type: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q6_k, q4_k_m "
                            "(with --format gguf also f16, bf16, f32: unquantized)")
    prune.add_argument("--format", default="hf", choices=("hf", "gguf", "compressed", "compressed-tensors"),
                       help="hf: a Hugging Face directory; gguf: one .gguf file for llama.cpp (needs a .gguf model); "
                            "compressed: prunellm's smaller format, served by `prunellm.load` (docs/format.md); "
                            "compressed-tensors: quantization-only results, for vLLM")
    prune.add_argument("--save-dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                       help="dtype of the saved weights. hf (auto): the source's for a sparse result, the compute "
                            "dtype for a quantized one; compressed (auto): float16 for a float32 model, else its own")
    prune.add_argument("--gguf-other-type", default="keep",
                       help="GGUF: type of embeddings, head and uncompressed layers (keep = as in the source)")
    prune.add_argument("--out", default=None,
                       help="output directory (hf, with report.json) or .gguf file (gguf, report beside it)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    prune.add_argument("--stream", action="store_true",
                       help="hold one block in memory at a time: read it from the safetensors directory MODEL, "
                            "compress it, write it to --out; a killed run resumes (docs/scale.md)")
    _add_model_options(prune)

    export = commands.add_parser("export", help="convert a pruned model directory to GGUF or a serving format",
                                 epilog=EPILOG)
    export.add_argument("directory", help="a directory written by `prunellm prune --out`")
    export.add_argument("--to", default="gguf", choices=("gguf", "compressed", "compressed-tensors"),
                        help="target format")
    export.add_argument("--type", default=None,
                        help="gguf: type of the compressed layers: q4_0, q5_0, q8_0, q4_1, q5_1, q4_k, q6_k, q4_k_m, "
                             "f16, bf16, f32")
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

    infer = commands.add_parser("bench-infer", help="prefill and decode speed and memory, dense vs compressed",
                                epilog=EPILOG)
    infer.add_argument("model", help="a directory written by `prunellm prune --format compressed`")
    infer.add_argument("--prompt-tokens", type=int, default=128)
    infer.add_argument("--new-tokens", type=int, default=32)
    infer.add_argument("--batch-size", type=int, default=1, help="sequences decoded together (tokens per call)")
    infer.add_argument("--repeats", type=int, default=3, help="runs per variant; the fastest is reported")
    infer.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    _add_budget_option(infer)
    infer.add_argument("--cuda-graph", action="store_true",
                       help="replay each decode step from a captured CUDA graph (both variants): times the GPU's "
                            "work rather than Python's kernel launches")
    infer.add_argument("--out", default=None, help="also write the rows to this JSON file")
    infer.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    infer.add_argument("--debug", action="store_true", help="show tracebacks")

    ev = commands.add_parser("eval", help="perplexity and zero-shot accuracy of a model", epilog=EPILOG)
    ev.add_argument("model", nargs="?", default=None, help="hub id, local directory or .gguf (default: SmolLM2-135M)")
    ev.add_argument("--datasets", type=_csv, default=None,
                    help="perplexity texts, e.g. wikitext2,ptb (default: wikitext2 unless --tasks is given)")
    ev.add_argument("--seqlen", type=int, default=2048)
    _add_task_options(ev)
    ev.add_argument("--out", default=None, help="also write the results to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_model_options(ev)

    sweep = commands.add_parser("sweep", help="compress at many settings, evaluate each, table and plots",
                                epilog=EPILOG)
    sweep.add_argument("model", nargs="?", default=None,
                       help="hub id, local HF directory or .gguf file (default: the bundled SmolLM2-135M)")
    sweep.add_argument("--methods", default="magnitude,wanda,sparsegpt", help="comma-separated methods")
    sweep.add_argument("--sparsities", default=None,
                       help="unstructured sparsities in (0, 1) (default 0.3,...,0.8 unless --nm is given)")
    sweep.add_argument("--nm", default=None, help="n:m patterns, e.g. 2:4,4:8")
    sweep.add_argument("--bits", default=None, help="quantize every setting: 4, or a list such as none,4")
    sweep.add_argument("--group-size", type=int, default=None, help="inputs per quantization scale (with --bits)")
    sweep.add_argument("--calib", default="wikitext2", help="wikitext2, ptb, c4 or a local .txt/.jsonl file")
    sweep.add_argument("--num-samples", type=int, default=128)
    sweep.add_argument("--seqlen", type=int, default=2048)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")
    sweep.add_argument("--eval", type=_csv, default=("wikitext2",), help="perplexity texts, e.g. wikitext2,ptb")
    sweep.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default: --seqlen)")
    _add_task_options(sweep)
    sweep.add_argument("--true-sequential", action="store_true", help="compress a block's layers stage by stage")
    sweep.add_argument("--include", type=_csv, default=(), help="comma-separated layer name patterns to compress")
    sweep.add_argument("--exclude", type=_csv, default=(), help="comma-separated layer name patterns to skip")
    sweep.add_argument("--first-block", type=int, default=0)
    sweep.add_argument("--last-block", type=int, default=None)
    sweep.add_argument("--offload-activations", action="store_true", help="keep calibration activations on CPU")
    sweep.add_argument("--forward-dtype", choices=("bfloat16", "float16"), default=None,
                       help="run the calibration forwards' products in this dtype (bfloat16: forwards ~1.5x "
                            "faster on CPUs with bf16 instructions); weights and solves keep the model's")
    sweep.add_argument("--no-layer-errors", action="store_true", help="skip per-layer errors (and the heatmap)")
    sweep.add_argument("--save-models", action="store_true", help="also save every compressed model under models/")
    sweep.add_argument("--out", required=True, help="directory for results.csv, results.json, plots/, report")
    sweep.add_argument("--resume", action="store_true", help="finish a sweep cut short: keep its rows, run the rest")
    sweep.add_argument("--overwrite", action="store_true", help="replace a previous sweep in --out")
    _add_model_options(sweep)

    report = commands.add_parser("report", help="render a sweep or prune run as HTML and Markdown", epilog=EPILOG)
    report.add_argument("run", help="a `prunellm sweep` directory, a `prunellm prune --out` directory, or its JSON")
    report.add_argument("--out", default=None, help="directory for report.html, report.md, plots/ (default: RUN)")
    report.add_argument("--quiet", action="store_true", help="print nothing but errors")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--keep-compressed", action=argparse.BooleanOptionalAction, default=None,
                        help="hold layers compressed in memory, expanded (or read by GPU kernels) at each call "
                             "(default: on a GPU with Triton yes, on a CPU no: dense is faster there)")
    _add_budget_option(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


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
    parser.add_argument("--tasks", type=_csv, default=(),
                        help="lm-eval zero-shot tasks, e.g. prunellm_basics (offline) or arc_easy,piqa (online)")
    parser.add_argument("--task-dir", action="append", default=[],
                        help="directory of lm-eval YAML task files (local JSON/JSONL data); repeatable")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items per task (checks only)")
    parser.add_argument("--task-batch-size", type=int, default=16, help="lm-eval requests per forward")


METHOD_OPTIONS = ("sparsity", "nm", "bits", "group_size", "sym", "act_order", "per_row", "block_size", "damp_frac",
                  "refine", "refine_iters", "hessian_shrink")
FLOAT_GGUF_TYPES = ("f32", "f16", "bf16")
SERVING_FORMATS = ("compressed", "compressed-tensors")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user gave: each method refuses those it does not take."""
    options = {name: getattr(args, name) for name in METHOD_OPTIONS if getattr(args, name) is not None}
    gguf_type = getattr(args, "gguf_type", None)
    if gguf_type is not None and gguf_type.lower() not in FLOAT_GGUF_TYPES:
        options["gguf"] = gguf_type.lower()  # quantized in the solver, onto the type's exact grid
    return options


def _gguf_output(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """For --format gguf: (source .gguf path, export config), refusing what cannot be exported."""
    from .io import default_model_path
    from .io.gguf_export import GGUFExportConfig
    from .io.source import resolve_source

    if args.format != "gguf":
        if args.gguf_type is not None and args.gguf_type.lower() in FLOAT_GGUF_TYPES:
            raise PrunellmError(f"--gguf-type {args.gguf_type} only applies with --format gguf")
        return None
    if args.gguf_type is None:
        raise PrunellmError("--format gguf needs --gguf-type (q4_0, q8_0, q4_k_m, ... or f16 for no quantization)")
    source = resolve_source(default_model_path() if args.model is None else args.model)
    if source.kind != "gguf":
        raise PrunellmError("--format gguf needs a .gguf model: its metadata and tokenizer are reused "
                            "(for a Hugging Face model, use llama.cpp's convert_hf_to_gguf.py first)")
    if args.out is not None and not str(args.out).endswith(".gguf"):
        raise PrunellmError(f"--out must name a .gguf file with --format gguf, got {args.out}")
    return source.location, GGUFExportConfig(args.gguf_type, args.gguf_other_type)


def _check_output_file(path: str, overwrite: bool) -> None:
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise PrunellmError(f"output file already exists: {out} (use --overwrite to replace it)")
    if out.is_dir():
        raise PrunellmError(f"output path is a directory: {out}")


def run_prune(args: argparse.Namespace) -> None:
    from . import pipeline
    from .data import load_eval_text
    from .devices import resolve_device
    from .distributed import init_from_env
    from .io import check_output_dir, load_model, save_model
    from .io.default_model import default_model_path, gguf_file, model_label
    from .io.dtypes import dtype_name, hf_save_dtype, method_quantizes, round_weights, stored_dtype
    from .io.load import resolve_dtype
    from .methods import build_method
    from .methods.recommended import with_recommended
    from .walker import AllocationConfig, WalkConfig

    options, allocation_kind, owl_lambda, note = with_recommended(args.method, method_options(args), args.allocation,
                                                                  args.owl_lambda, can_allocate=not args.stream)
    method = build_method(args.method, **options)  # bad options fail before any loading
    allocation = AllocationConfig(allocation_kind, *([] if owl_lambda is None else [owl_lambda]),
                                  owl_threshold=args.owl_threshold, unit=args.allocation_unit)
    if note is not None:
        print(note)
    gguf_output = _gguf_output(args)
    if args.save_dtype != "auto" and args.format not in ("hf", "compressed"):
        raise PrunellmError(f"--save-dtype only applies with --format hf or compressed, not --format {args.format}")
    if args.format in SERVING_FORMATS:
        from .deploy import check_serving_output

        check_serving_output(method, args.format)
    if args.out is not None and gguf_output is not None:
        _check_output_file(args.out, args.overwrite)
    elif args.out is not None:
        check_output_dir(args.out, args.overwrite)
    calibration = pipeline.CalibrationConfig(args.calib, args.num_samples, args.seqlen, args.seed, args.data_dir)
    walk = WalkConfig(device=args.device, true_sequential=args.true_sequential, include=args.include,
                      exclude=args.exclude, first_block=args.first_block, last_block=args.last_block,
                      batch_size=args.batch_size, offload_activations=args.offload_activations,
                      layer_errors=not args.no_layer_errors, progress=not args.quiet, forward_dtype=args.forward_dtype)
    evaluation = pipeline.EvalConfig(args.eval, args.eval_seqlen, args.eval_tokens, args.eval_batch_size,
                                     dense=not args.no_dense_eval)
    group = init_from_env(args.device)  # one of several processes under torchrun, else None
    if args.stream:
        return _prune_streaming(args, method, calibration, walk, allocation, evaluation, group)
    for name in evaluation.datasets:  # a typo in --eval must not wait for the end of a long prune
        load_eval_text(name, data_dir=args.data_dir)
    device = group.device if group is not None else resolve_device(args.device)
    save_dtype = None
    if args.format == "hf":  # decided before loading: a refused --save-dtype fails at once
        save_dtype = hf_save_dtype(args.save_dtype, stored=stored_dtype(args.model or default_model_path()),
                                   compute=resolve_dtype(args.dtype, device),
                                   quantizes=method_quantizes(method.describe()))
    model, tokenizer = load_model(args.model, dtype=args.dtype, compute_device=device)
    if gguf_output is not None:
        pipeline.check_gguf_output(model, method, walk, *gguf_output)
    eval_kwargs = dict(default_seqlen=args.seqlen, data_dir=args.data_dir, device=device, progress=not args.quiet)

    is_main = group is None or group.is_main
    dense = pipeline.perplexities(model, tokenizer, evaluation, **eval_kwargs) if evaluation.dense and is_main else {}
    result = pipeline.prune(model, tokenizer, method, calibration, walk, allocation, dist=group)
    if not is_main:
        return  # every process holds the same compressed model: the first evaluates and saves it
    written = _written_dtype(args, model, save_dtype)
    if written is not None:
        round_weights(model, written)  # the figures below are then those of the saved weights
    compressed = pipeline.perplexities(model, tokenizer, evaluation, **eval_kwargs)
    report = pipeline.build_report(model_source=model_label(args.model), model=model, method=method,
                                   calibration=calibration, walk=walk, result=result, eval_config=evaluation,
                                   dense_ppl=dense, compressed_ppl=compressed, allocation=allocation)
    source_file = gguf_file(args.model)
    if source_file is not None:
        report["model"]["gguf_file"] = source_file
    print(f"{method.name}: {len(result.layers)} layers, sparsity {report['sparsity']['compressed_layers']:.2%}, "
          f"{result.seconds['total']:.1f} s (solver {result.seconds['solve']:.1f} s)")
    for name in evaluation.datasets:
        before = f"dense {dense[name]:.3f} -> " if name in dense else ""
        print(f"{name} perplexity: {before}{method.name} {compressed[name]:.3f}")
    if args.out is not None and gguf_output is not None:
        path = pipeline.write_gguf(model, result, *gguf_output, args.out, method=method, report=report)
        print(f"saved to {path} (report: {path}.report.json)")
    elif args.out is not None and args.format in SERVING_FORMATS:
        from .deploy import write_serving

        path, summary = write_serving(model, tokenizer, result, method, args.format, args.out, report=report,
                                      dtype=args.save_dtype, overwrite=args.overwrite)
        print(f"saved to {path}: {summary}")
    elif args.out is not None:
        report["saved_dtype"] = dtype_name(save_dtype)
        path = save_model(model, tokenizer, args.out, report=report, overwrite=args.overwrite, dtype=save_dtype,
                          gguf_blocks=result.gguf_blocks, quant_grids=result.quant_grids)
        print(f"saved to {path} ({dtype_name(save_dtype)})")


def _written_dtype(args: argparse.Namespace, model: Any, hf_dtype: Any) -> Any:
    """The dtype the output stores dense and sparse weights in, when the run writes one in a
    dtype of prunellm's choosing (hf, compressed); else None."""
    if args.out is None or args.format not in ("hf", "compressed"):
        return None
    if args.format == "hf":
        return hf_dtype
    from .io.compressed.checkpoint import save_dtype

    return save_dtype(model, args.save_dtype)


def _prune_streaming(args: argparse.Namespace, method: Any, calibration: Any, walk: Any, allocation: Any,
                     evaluation: Any, group: Any) -> None:
    from .streaming import prune_streaming

    if args.model is None or args.out is None or args.format != "hf":
        raise PrunellmError("--stream reads a safetensors model directory and writes one: give MODEL and --out DIR "
                            f"(no --format {args.format}: convert the result with `prunellm export OUT --to ...`)")
    if evaluation.datasets:
        raise PrunellmError("--stream never holds the whole model, so it cannot evaluate it: drop --eval and run "
                            "`prunellm eval OUT` afterwards")
    run = prune_streaming(args.model, args.out, method, calibration, walk, dtype=args.dtype, overwrite=args.overwrite,
                          save_dtype=args.save_dtype, allocation=allocation, group=group, model_label=str(args.model))
    if group is None or group.is_main:
        resumed = f", resumed at block {run.resumed_from}" if run.resumed_from is not None else ""
        print(f"{method.name}: {len(run.result.layers)} layers, sparsity "
              f"{run.report['sparsity']['compressed_layers']:.2%}, {run.result.seconds['total']:.1f} s{resumed}")
        print(f"saved to {run.out} ({run.report['saved_dtype']})")


def run_export(args: argparse.Namespace) -> None:
    from . import pipeline

    if args.to in SERVING_FORMATS:
        from .deploy import export_directory

        if args.type is not None:
            raise PrunellmError(f"--type only applies with --to gguf, not --to {args.to}")
        if args.save_dtype != "auto" and args.to != "compressed":
            raise PrunellmError(f"--save-dtype only applies with --to compressed, not --to {args.to}")
        out = args.out or f"{str(args.directory).rstrip('/')}-{args.to}"
        path, summary = export_directory(args.directory, args.to, out, dtype=args.save_dtype, overwrite=args.overwrite)
        print(f"saved to {path}: {summary}")
        return
    if args.type is None:
        raise PrunellmError("--to gguf needs --type (q4_0, q8_0, q4_k_m, ... or f16 for no quantization)")
    out = args.out or f"{str(args.directory).rstrip('/')}-{args.type.lower()}.gguf"
    if not out.endswith(".gguf"):
        raise PrunellmError(f"--out must name a .gguf file, got {out}")
    _check_output_file(out, args.overwrite)
    path = pipeline.export_directory_to_gguf(args.directory, out, args.type, args.other_type, args.source)
    print(f"saved to {path}")


def run_generate(args: argparse.Namespace) -> None:
    from .io import load_tokenizer
    from .runtime.generate import generate_text
    from .runtime.load import load

    tokenizer = load_tokenizer(args.model)
    model = load(args.model, args.device, keep_compressed=args.keep_compressed, dense_budget=_budget_bytes(args))
    generation = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed)
    print(args.prompt + generation.text)
    print(f"{generation.new_tokens} tokens in {generation.seconds:.2f} s ({generation.tokens_per_second:.1f} tokens/s)",
          file=sys.stderr)


def run_bench_infer(args: argparse.Namespace) -> None:
    from .devices import resolve_device
    from .io import write_json_atomic
    from .io.compressed.checkpoint import is_compressed_dir
    from .runtime.bench_infer import InferConfig, compare, format_rows, machine_description

    if not is_compressed_dir(args.model):
        raise PrunellmError(f"{args.model} is not a compressed directory (write one with --format compressed)")
    for name in ("prompt_tokens", "new_tokens", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise PrunellmError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cuda_graph and resolve_device(args.device).type != "cuda":
        raise PrunellmError("--cuda-graph needs a CUDA device")
    if args.out is not None:
        _check_output_file(args.out, args.overwrite)
    config = InferConfig(args.prompt_tokens, args.new_tokens, args.batch_size, args.repeats, args.device,
                         dense_budget=_budget_bytes(args), cuda_graph=args.cuda_graph)
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
    from . import pipeline
    from .data import load_eval_text
    from .devices import resolve_device
    from .eval.table import eval_record, format_scores
    from .io import load_model, write_json_atomic
    from .io.default_model import model_label

    datasets = args.datasets if args.datasets is not None else (() if args.tasks else ("wikitext2",))
    for name in datasets:
        load_eval_text(name, data_dir=args.data_dir)
    suite = _task_suite(args)
    if args.out is not None:
        _check_output_file(args.out, args.overwrite)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, dtype=args.dtype, compute_device=device)
    evaluation = pipeline.EvalConfig(datasets, args.seqlen, args.eval_tokens, args.eval_batch_size)
    results = pipeline.perplexities(model, tokenizer, evaluation, default_seqlen=args.seqlen, data_dir=args.data_dir,
                                    device=device, progress=not args.quiet)
    for name, value in results.items():
        print(f"{name} perplexity: {value:.3f}")
    scores = {}
    if suite is not None:
        scores = suite.evaluate(model, tokenizer, device=device, bos_token_id=pipeline.bos_for(model, tokenizer))
        print(format_scores(scores))
    if args.out is not None:
        write_json_atomic(args.out, eval_record(model_label(args.model), evaluation, results, suite, scores))
        print(f"saved to {args.out}")


def run_sweep(args: argparse.Namespace) -> None:
    from . import pipeline
    from .data import load_eval_text
    from .devices import resolve_device
    from .eval.zero_shot import ZeroShotConfig
    from .io import load_model
    from .io.default_model import gguf_file, model_label
    from .sweep import Sweep, SweepConfig, describe_row, parse_grid, prepare_output
    from .walker import WalkConfig

    settings = parse_grid(args.methods, args.sparsities, args.nm, args.bits, args.group_size)
    config = SweepConfig(
        calibration=pipeline.CalibrationConfig(args.calib, args.num_samples, args.seqlen, args.seed, args.data_dir),
        evaluation=pipeline.EvalConfig(args.eval, args.eval_seqlen, args.eval_tokens, args.eval_batch_size),
        zero_shot=ZeroShotConfig(tuple(args.tasks), tuple(args.task_dir), args.num_fewshot, args.limit,
                                 args.task_batch_size) if args.tasks else None,
        walk=WalkConfig(device=args.device, true_sequential=args.true_sequential, include=args.include,
                        exclude=args.exclude, first_block=args.first_block, last_block=args.last_block,
                        batch_size=args.batch_size, offload_activations=args.offload_activations,
                        layer_errors=not args.no_layer_errors, progress=not args.quiet,
                        forward_dtype=args.forward_dtype),
        save_models=args.save_models)
    prepare_output(args.out, resume=args.resume, overwrite=args.overwrite)  # before loading anything
    for name in config.evaluation.datasets:
        load_eval_text(name, data_dir=args.data_dir)
    suite = _task_suite(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, compute_device=resolve_device(args.device))
    sweep = Sweep(model, tokenizer, settings, config, args.out, suite=suite, resume=args.resume,
                  overwrite=args.overwrite, gguf_file=gguf_file(args.model), model_source=model_label(args.model))
    for index, row in enumerate(sweep.run()):
        print(f"[{index}/{len(settings)}] {describe_row(row)}", flush=True)
        files = _write_report(args.out)  # plots and report follow every row: a sweep cut short keeps them
    print(f"results: {Path(args.out) / 'results.csv'}; report: {files.html}")


def _write_report(run: str, out: str | None = None) -> Any:
    from .report import write_report

    return write_report(run, out)


def run_report(args: argparse.Namespace) -> None:
    files = _write_report(args.run, args.out)
    if not args.quiet:
        print(f"saved {files.html} and {files.markdown} ({len(files.figures)} figures)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False) and args.command != "report":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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

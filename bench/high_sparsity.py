"""High sparsity: plain SparseGPT against OWL allocation, least-squares refinement (LSQ), an
ADMM mask search followed by LSQ (ALPS, a slower opt-in mode), and the combinations.

For each model and sparsity (and 2:4, where allocation is off: n:m fixes every layer's
sparsity), prunes a fresh copy, evaluates WikiText-2 test perplexity with the papers'
protocol and records the prune time. Calibration: windows of WikiText-2 validation
(tokenized, local), as in the foundation table. Prints a Markdown table, writes JSON.

    python bench/high_sparsity.py --model smollm2 --sparsities 0.5,0.6,0.7,0.8 --nm 2:4
    python bench/high_sparsity.py --model /path/gemma-3-270m.gguf --seqlen 1024
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from prunellm.data import load_eval_text, resolve_data_dir
from prunellm.eval import perplexity, tokenize_eval_text
from prunellm.io import library_versions, load_model
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, bos_for, prune
from prunellm.walker import AllocationConfig, WalkConfig

from smollm2_table import data_relative  # noqa: E402  (bench/ is first on sys.path)

VARIANTS = {
    "SparseGPT": ({}, "uniform"),
    "+ OWL": ({}, "owl"),
    "+ LSQ": ({"refine": "lsq"}, "uniform"),
    "+ OWL + LSQ": ({"refine": "lsq"}, "owl"),
    "+ ALPS": ({"refine": "alps"}, "uniform"),
    "+ OWL + ALPS": ({"refine": "alps"}, "owl"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (bundled) or a model path / hub id")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sparsities", default="0.5,0.6,0.7,0.8")
    parser.add_argument("--nm", default="2:4", help="n:m patterns to add (comma-separated; empty for none)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--owl-lambda", type=float, default=0.08)
    parser.add_argument("--owl-threshold", type=float, default=5.0)
    parser.add_argument("--allocation-unit", default="block", help="block or layer")
    parser.add_argument("--admm-settled", type=float, default=None,
                        help="ablation: ALPS's ADMM stops once under this fraction of the support changes "
                             "in three iterations (solvers/alps.py's default 3e-3; 0 = only a fixed support)")
    parser.add_argument("--out", default="bench/results/high_sparsity.json")
    args = parser.parse_args()
    if args.admm_settled is not None and not 0 <= args.admm_settled < 1:
        raise SystemExit(f"--admm-settled must be in [0, 1), got {args.admm_settled}")
    if args.admm_settled is not None:
        # Not a user option: the library's default is what the table measures; this reruns a row without it.
        import prunellm.solvers.alps as alps
        alps.admm_search.__kwdefaults__["settled"] = args.admm_settled

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("set --data-dir or PRUNELLM_DATA_DIR")
    model, tokenizer = load_model(None if args.model == "smollm2" else args.model)
    calibration = CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), args.num_samples,
                                    args.seqlen, seed=0)
    test_ids = tokenize_eval_text(load_eval_text("wikitext2", data_dir=data_dir), tokenizer, args.eval_tokens)
    bos = bos_for(model, tokenizer)
    settings = [("sparsity", float(s)) for s in args.sparsities.split(",") if s]
    settings += [("nm", nm) for nm in args.nm.split(",") if nm]

    rows = [{"setting": "dense", "variant": "-", "ppl": perplexity(model, test_ids, seqlen=args.seqlen, batch_size=4,
                                                                 bos_token_id=bos, progress=False), "seconds": 0.0}]
    print(f"dense: {rows[0]['ppl']:.2f}", flush=True)
    header = {"model": Path(args.model).name, "owl": [args.owl_lambda, args.owl_threshold, args.allocation_unit],
              "admm_settled": args.admm_settled, "versions": library_versions(),
              "calibration": {**vars(calibration), "source": data_relative(calibration.source, data_dir)},
              "eval_tokens": test_ids.numel()}
    for kind, value in settings:
        for variant in args.variants.split(","):
            options, allocation = VARIANTS[variant]
            if kind == "nm" and allocation == "owl":
                continue  # an n:m pattern fixes every layer's sparsity: nothing to allocate
            candidate = copy.deepcopy(model)
            method = build_method("sparsegpt", **{kind: value}, **options)
            started = time.perf_counter()
            prune(candidate, tokenizer, method, calibration, WalkConfig(progress=False, layer_errors=False),
                  AllocationConfig(allocation, args.owl_lambda, args.owl_threshold, args.allocation_unit))
            seconds = time.perf_counter() - started
            ppl = perplexity(candidate, test_ids, seqlen=args.seqlen, batch_size=4, bos_token_id=bos, progress=False)
            label = f"{value:.0%}" if kind == "sparsity" else value
            rows.append({"setting": label, "variant": variant, "ppl": ppl, "seconds": seconds})
            print(f"{label} {variant}: ppl {ppl:.2f}, prune {seconds:.1f} s", flush=True)
            del candidate
            _save(Path(args.out), header, rows)  # after every row: a cut-short run keeps what it measured

    print("\n| setting | variant | WikiText-2 ppl | prune time (s) |\n| --- | --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['setting']} | {row['variant']} | {row['ppl']:.2f} | {row['seconds']:.1f} |")


def _save(out: Path, header: dict, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**header, "rows": rows}, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()

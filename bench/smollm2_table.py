"""The foundation table: SmolLM2-135M, every method at 50% / n:m / 4-bit, WikiText-2 perplexity.

Calibration: 32 windows x 512 tokens of WikiText-2 validation (tokenized, local), seed 0.
Evaluation: the first 32,768 tokens of WikiText-2 test, seqlen 512, the papers' protocol.
Prints a Markdown table (perplexity, prune time) and writes the figures as JSON.

    python bench/smollm2_table.py [--data-dir DIR] [--out bench/results/smollm2_table.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from prunellm.data import load_eval_text, resolve_data_dir
from prunellm.eval import perplexity, tokenize_eval_text
from prunellm.io import library_versions, load_model
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.walker import WalkConfig

SETTINGS = [
    ("dense", None, {}),
    ("magnitude 50%", "magnitude", dict(sparsity=0.5)),
    ("Wanda 50%", "wanda", dict(sparsity=0.5)),
    ("SparseGPT 50%", "sparsegpt", dict(sparsity=0.5)),
    ("magnitude 2:4", "magnitude", dict(nm="2:4")),
    ("Wanda 2:4", "wanda", dict(nm="2:4")),
    ("SparseGPT 2:4", "sparsegpt", dict(nm="2:4")),
    ("SparseGPT 4:8", "sparsegpt", dict(nm="4:8")),
    ("SparseGPT 50% + 4-bit (per-channel)", "sparsegpt", dict(sparsity=0.5, bits=4)),
    ("GPTQ 4-bit (per-channel)", "gptq", dict(bits=4)),
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def data_relative(path: str | Path, data_dir: Path) -> str:
    """A data file as committed results name it: relative to the data directory ($PRUNELLM_DATA_DIR),
    never by this machine's absolute path. A file outside the data directory keeps its name as given."""
    try:
        return Path(path).resolve().relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M GGUF")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--only", default=None, help="comma-separated row labels to run (default: all)")
    parser.add_argument("--forward-dtype", default="auto",
                        help="the walker's forward dtype (auto: bfloat16 on a CPU with bf16 instructions, else float32)")
    parser.add_argument("--out", default="bench/results/smollm2_table.json")
    args = parser.parse_args()

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("set --data-dir or PRUNELLM_DATA_DIR")
    model, tokenizer = load_model(args.model)
    calibration = CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), args.num_samples,
                                    args.seqlen, seed=0)
    test_ids = tokenize_eval_text(load_eval_text("wikitext2", data_dir=data_dir), tokenizer, args.eval_tokens)
    wanted = set(args.only.split(",")) if args.only else None

    rows = []
    ran = set()  # the forward dtypes the prunes ran ("auto" resolved)
    for label, method_name, options in SETTINGS:
        if wanted and label not in wanted:
            continue
        candidate = copy.deepcopy(model)
        seconds = 0.0
        if method_name is not None:
            started = time.perf_counter()
            result = prune(candidate, tokenizer, build_method(method_name, **options), calibration,
                           WalkConfig(progress=False, layer_errors=False, forward_dtype=args.forward_dtype))
            ran.add(result.forward_dtype)
            seconds = time.perf_counter() - started
        ppl = perplexity(candidate, test_ids, seqlen=args.seqlen, batch_size=4, progress=False)
        rows.append({"setting": label, "method": method_name, "options": options, "wikitext2_ppl": ppl,
                     "prune_seconds": seconds})
        print(f"{label}: ppl {ppl:.2f}, prune {seconds:.1f} s", flush=True)
        del candidate

    print(f"\nSmolLM2-135M, calibration {args.num_samples} x {args.seqlen} tokens of WikiText-2 validation; "
          f"WikiText-2 test, first {test_ids.numel()} tokens, seqlen {args.seqlen}; forwards: {', '.join(sorted(ran))}. "
          f"Machine: {machine()}\n")
    print("| setting | WikiText-2 ppl | prune time (s) |\n| --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['setting']} | {row['wikitext2_ppl']:.2f} | {row['prune_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration_json = {**vars(calibration), "source": data_relative(calibration.source, data_dir)}
    out.write_text(json.dumps({"machine": machine(), "versions": library_versions(), "eval_tokens": test_ids.numel(),
                               "forward_dtype": ", ".join(sorted(ran)) or args.forward_dtype, "calibration": calibration_json, "rows": rows},
                              indent=2))


if __name__ == "__main__":
    main()

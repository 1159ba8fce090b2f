"""GGUF export against llama.cpp's own quantizer, perplexity measured by llama.cpp.

For one model (a GGUF file, as the real models here are): writes the dense model as an F32
GGUF, quantizes it with llama.cpp's `llama-quantize` (with and without an importance matrix
from `llama-imatrix` on the same calibration text prunellm uses), exports prunellm's GPTQ and
SparseGPT results onto the same GGUF types, and scores every file with llama.cpp (its Python
bindings, the papers' windows: see prunellm.formats.gguf.llama_cpp). Prunellm rows also give prunellm's
own perplexity of the same weights, to check the export. In every file the token embedding
(also the output head: both models tie them) is Q8_0, so rows differ only in the block layers;
llama.cpp's uniform types use `--pure` for the same reason, its Q4_K_M keeps its mixture.

    python bench/gguf_vs_llama_cpp.py --model smollm2 --seqlen 512 --llama-bin DIR
    python bench/gguf_vs_llama_cpp.py --model /path/gemma-3-270m.gguf --seqlen 1024 --llama-bin DIR
    python bench/gguf_vs_llama_cpp.py --model smollm2 --from-hf ...   # the same rows from a Hugging Face copy

--from-hf saves the loaded model as a Hugging Face directory (float32 safetensors, its tokenizer) and
runs every row from that copy: prunellm's files then come from its own GGUF writer (tokenizer and
metadata from the Hugging Face files, formats/gguf/hf_writer.py), not from the source .gguf's.

DIR holds llama-quantize and llama-imatrix (`make llama-tools` builds them from the
llama-cpp-python source package); the bindings come from the same package.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from prunellm.data import load_eval_text, resolve_data_dir
from prunellm.eval import eval_windows, perplexity, tokenize_eval_text
from prunellm.formats.gguf.llama_cpp import llama_cpp_perplexity
from prunellm.io import default_model_path, library_versions, load_model, save_model
from prunellm.formats.gguf.export import GGUFExportConfig, export_gguf
from prunellm.formats.gguf.hf_writer import export_hf_gguf
from prunellm.methods import build_method
from prunellm.methods.options import shrink_setting
from prunellm.methods.recommended import RECOMMENDED_SHRINK
from prunellm.pipeline import CalibrationConfig, bos_for, prune
from prunellm.walker import WalkConfig

from smollm2_table import data_relative  # noqa: E402  (bench/ is first on sys.path)

# name: (kind, options). llama.cpp rows: (ftype, imatrix?); prunellm rows: (method, options),
# "shrink" rows quantize against the Hessian shrunk toward its diagonal (--hessian-shrink).
VARIANTS = {
    "llama.cpp Q8_0": ("llama", ("Q8_0", False)),
    "prunellm GPTQ → Q8_0": ("prunellm", ("gptq", {"gguf": "q8_0", "shrink": True})),
    "llama.cpp Q4_0": ("llama", ("Q4_0", False)),
    "llama.cpp Q4_0 + imatrix": ("llama", ("Q4_0", True)),
    "prunellm GPTQ → Q4_0 (plain H)": ("prunellm", ("gptq", {"gguf": "q4_0"})),
    "prunellm GPTQ → Q4_0": ("prunellm", ("gptq", {"gguf": "q4_0", "shrink": True})),
    "prunellm SparseGPT 50% + Q4_0": ("prunellm", ("sparsegpt", {"gguf": "q4_0", "sparsity": 0.5})),
    "llama.cpp Q4_K_M": ("llama", ("Q4_K_M", False)),
    "llama.cpp Q4_K_M + imatrix": ("llama", ("Q4_K_M", True)),
    "prunellm GPTQ → Q4_K_M (plain H)": ("prunellm", ("gptq", {"gguf": "q4_k_m"})),
    "prunellm GPTQ → Q4_K_M": ("prunellm", ("gptq", {"gguf": "q4_k_m", "shrink": True})),
    # Q4_K itself: every block layer q4_k (Q4_K_S with --pure), less one shared with q6_k than
    # Q4_K_M's mixture; widths that do not tile 256 fall back to q5_0 in both tools.
    "llama.cpp Q4_K": ("llama", ("Q4_K_S", False)),
    "llama.cpp Q4_K + imatrix": ("llama", ("Q4_K_S", True)),
    "prunellm GPTQ → Q4_K (plain H)": ("prunellm", ("gptq", {"gguf": "q4_k"})),
    "prunellm GPTQ → Q4_K": ("prunellm", ("gptq", {"gguf": "q4_k", "shrink": True})),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (bundled) or a .gguf path")
    parser.add_argument("--llama-bin", default=os.environ.get("PRUNELLM_LLAMA_BIN"),
                        help="directory with llama-quantize and llama-imatrix")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--hessian-shrink", type=shrink_setting, default=RECOMMENDED_SHRINK,
                        help="GPTQ rows marked 'shrink': Hessian shrinkage toward its diagonal, a number or 'auto' "
                             "(default: the recommended default of --method gptq)")
    parser.add_argument("--score-llama-files", action="store_true",
                        help="also score llama.cpp's own files with prunellm (their weights dequantized to float), "
                             "to tell weight quality from llama.cpp's runtime rounding")
    parser.add_argument("--tool-chunks", type=int, default=64,
                        help="also score every file with llama.cpp's llama-perplexity tool on wiki.test.raw, ctx 512, "
                             "this many chunks (it scores the second half of each window); 0: off")
    parser.add_argument("--from-hf", action="store_true",
                        help="run every row from a Hugging Face copy of the model (see above)")
    parser.add_argument("--work-dir", default="/tmp/prunellm-gguf-bench")
    parser.add_argument("--out", default=None, help="JSON results (default bench/results/gguf_<model>.json)")
    args = parser.parse_args()

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None or not args.llama_bin:
        raise SystemExit("set --data-dir (or PRUNELLM_DATA_DIR) and --llama-bin (or PRUNELLM_LLAMA_BIN)")
    source = default_model_path() if args.model == "smollm2" else Path(args.model)
    tag = ("smollm2" if args.model == "smollm2" else source.stem) + ("-from-hf" if args.from_hf else "")
    work = Path(args.work_dir) / tag
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(args.llama_bin)

    model, tokenizer = load_model(source)
    model_name = source.name
    if args.from_hf:
        hf_copy = work / "hf"
        if not (hf_copy / "config.json").exists():
            save_model(model, tokenizer, hf_copy, overwrite=True)
        model, tokenizer = load_model(hf_copy)
        source = hf_copy
    calib_text = data_dir / "wikitext-2-tokenized" / "valid.txt"
    calibration = CalibrationConfig(str(calib_text), args.num_samples, args.seqlen, seed=0)
    bos = bos_for(model, tokenizer)
    test_ids = tokenize_eval_text(load_eval_text("wikitext2", data_dir=data_dir), tokenizer, args.eval_tokens)
    windows = eval_windows(test_ids, args.seqlen, bos)  # (W, seqlen)

    out = Path(args.out or f"bench/results/gguf_{tag}.json")
    versions = {**library_versions(), "llama_cpp_python": _llama_cpp_version()}
    header = {"model": model_name, "from_hf": args.from_hf, "hessian_shrink": args.hessian_shrink, "versions": versions,
              "calibration": {**vars(calibration), "source": data_relative(calib_text, data_dir)},
              "eval_tokens": test_ids.numel(), "seqlen": args.seqlen, "tool_chunks": args.tool_chunks}
    dense = work / "dense-f32.gguf"
    _export(model, tokenizer, {}, source, dense, GGUFExportConfig("q8_0", other_type="f32"))
    tool = None if args.tool_chunks <= 0 else {"bin_dir": bin_dir, "text": data_dir / "wikitext-2-raw" / "wiki.test.raw",
                                               "ctx": 512, "chunks": args.tool_chunks}
    rows = [_row("dense (F32 GGUF)", dense, windows, bos, 0.0,
                 perplexity(model, test_ids, seqlen=args.seqlen, batch_size=4, bos_token_id=bos, progress=False),
                 tool)]
    print(_line(rows[-1]), flush=True)
    _save(out, header, rows)
    imatrix = None
    for name in args.variants.split(","):
        kind, spec = VARIANTS[name]
        path = work / (name.replace(" ", "_").replace("→", "to").replace("%", "").replace("+", "plus") + ".gguf")
        started = time.perf_counter()
        own_ppl = None
        if kind == "llama":
            ftype, with_imatrix = spec
            if with_imatrix and imatrix is None:
                imatrix = _imatrix(bin_dir, dense, calib_text, work, args.seqlen, args.num_samples)
            _llama_quantize(bin_dir, dense, path, ftype, imatrix if with_imatrix else None)
            if args.score_llama_files:
                quantized, _ = load_model(path)
                own_ppl = perplexity(quantized, test_ids, seqlen=args.seqlen, batch_size=4, bos_token_id=bos,
                                     progress=False)
                del quantized
        else:
            method_name, options = spec[0], dict(spec[1])
            candidate = copy.deepcopy(model)
            if options.pop("shrink", False):
                options = {**options, "hessian_shrink": args.hessian_shrink}
            method = build_method(method_name, **options)
            result = prune(candidate, tokenizer, method, calibration, WalkConfig(progress=False, layer_errors=False))
            _export(candidate, tokenizer, {r.name: result.gguf_blocks.get(r.name) for r in result.layers}, source, path,
                    GGUFExportConfig(options["gguf"], other_type="q8_0"))
            own_ppl = perplexity(candidate, test_ids, seqlen=args.seqlen, batch_size=4, bos_token_id=bos,
                                 progress=False)
            del candidate
            chosen = Counter(r.hessian_shrink for r in result.layers if r.hessian_shrink is not None)
        rows.append(_row(name, path, windows, bos, time.perf_counter() - started, own_ppl, tool))
        if kind != "llama" and chosen:  # "auto": how many layers took each shrinkage
            rows[-1]["hessian_shrink_chosen"] = {f"{alpha:g}": n for alpha, n in sorted(chosen.items())}
        print(_line(rows[-1]), flush=True)
        _save(out, header, rows)

    print("\n| variant | file (MB) | ppl, llama.cpp | ppl, prunellm (same weights) | llama-perplexity | time (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        own = f"{row['ppl_prunellm']:.2f}" if row["ppl_prunellm"] is not None else "-"
        tool_ppl = f"{row['ppl_llama_perplexity']:.2f}" if "ppl_llama_perplexity" in row else "-"
        print(f"| {row['variant']} | {row['megabytes']:.1f} | {row['ppl_llama_cpp']:.2f} | {own} | {tool_ppl} "
              f"| {row['seconds']:.0f} |")


def _export(model, tokenizer, layers: dict, source: Path, path: Path, config: GGUFExportConfig) -> None:
    """A GGUF source: its metadata and tokenizer copied (export_gguf); a Hugging Face directory:
    prunellm's own writer."""
    if source.is_dir():
        export_hf_gguf(model, tokenizer, layers, path, config)
    else:
        export_gguf(model, layers, source, path, config)


def _save(out: Path, header: dict, rows: list[dict]) -> None:
    """Merge this run's rows into the results file after every row, so a cut-short run keeps
    what it measured; a run of a few variants replaces those rows and keeps the others, provided
    it measured under the same settings."""
    previous = json.loads(out.read_text()) if out.exists() else {}
    same_settings = _settings(previous) == _settings(header)
    kept = [row for row in previous.get("rows", []) if same_settings and row["variant"] not in {r["variant"] for r in rows}]
    order = list(VARIANTS)
    merged = sorted(kept + rows, key=lambda row: order.index(row["variant"]) if row["variant"] in order else -1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**header, "rows": merged}, indent=2))
    tmp.replace(out)


def _settings(header: dict) -> dict:
    """What must match for rows to merge: everything but versions and rows; the model by file name
    (the same GGUF assembled in another directory is the same model)."""
    return {key: Path(str(value)).name if key == "model" else value
            for key, value in header.items() if key not in ("versions", "rows")}


def _llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def _row(name: str, path: Path, windows, bos, seconds: float, own_ppl: float | None, tool: dict | None) -> dict:
    ppl = llama_cpp_perplexity(path, windows, bos)
    row = {"variant": name, "megabytes": path.stat().st_size / 1e6, "ppl_llama_cpp": ppl, "ppl_prunellm": own_ppl,
           "seconds": seconds}
    if tool is not None:
        row["ppl_llama_perplexity"] = _tool_perplexity(path, **tool)
    return row


def _tool_perplexity(path: Path, bin_dir: Path, text: Path, ctx: int, chunks: int) -> float:
    """llama.cpp's `llama-perplexity` on the raw text, as llama.cpp's users quote it."""
    done = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(path), "-f", str(text), "-c", str(ctx),
                           "--chunks", str(chunks), "-t", str(os.cpu_count())], capture_output=True, text=True)
    match = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"llama-perplexity failed on {path}: {(done.stderr or done.stdout).strip()[-300:]}")
    return float(match.group(1))


def _line(row: dict) -> str:
    own = f", prunellm {row['ppl_prunellm']:.3f}" if row["ppl_prunellm"] is not None else ""
    chosen = f", shrinkage chosen {row['hessian_shrink_chosen']}" if "hessian_shrink_chosen" in row else ""
    if "ppl_llama_perplexity" in row:
        chosen = f", llama-perplexity {row['ppl_llama_perplexity']:.3f}" + chosen
    return (f"{row['variant']}: llama.cpp {row['ppl_llama_cpp']:.3f}{own}, {row['megabytes']:.1f} MB, "
            f"{row['seconds']:.0f} s{chosen}")


def _imatrix(bin_dir: Path, model: Path, text: Path, work: Path, seqlen: int, chunks: int) -> Path:
    """llama.cpp's importance matrix from the same text (and amount of it) prunellm calibrates on."""
    out = work / "imatrix.gguf"
    subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(model), "-f", str(text), "-c", str(seqlen),
                    "--chunks", str(chunks), "-o", str(out), "-t", str(os.cpu_count())],
                   check=True, capture_output=True)
    return out


def _llama_quantize(bin_dir: Path, source: Path, out: Path, ftype: str, imatrix: Path | None) -> None:
    command = [str(bin_dir / "llama-quantize"), "--token-embedding-type", "q8_0", "--output-tensor-type", "q8_0"]
    if not ftype.endswith("_M"):
        command.append("--pure")  # one type for every block layer, as prunellm's rows
    if imatrix is not None:
        command += ["--imatrix", str(imatrix)]
    command += [str(source), str(out), ftype, str(os.cpu_count())]
    subprocess.run(command, check=True, capture_output=True)


if __name__ == "__main__":
    main()

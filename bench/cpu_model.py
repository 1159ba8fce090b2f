"""A whole model at decode on this CPU: prunellm's dense model against the same model kept
compressed on the native kernels, one row per compressed layout.

    python bench/cpu_model.py DIR [DIR ...] [--prompt-tokens 128] [--new-tokens 128] [--rounds 1] \
        [--head-bits 4 [8]] [--embed-bits 4] [--int8-activations] [--llama FILE.gguf ...] [--llama-ppl] \
        [--out bench/results/cpu_model_smollm2.json] [--plot bench/results/cpu_model_smollm2.png]
    python bench/cpu_model.py DIR [DIR ...] [--head-bits 4] [--llama FILE.gguf ...] --score-only --out SCORES.json
    python bench/cpu_model.py DIR [DIR ...] ... --ppl-from SCORES.json --out RESULT.json
    python bench/cpu_model.py bench/results/cpu_model_qwen.json --from-json [--plot FILE.png] \
        [--ppl-from SCORES.json ... --out bench/results/cpu_model_qwen.json]

Each DIR is a `prunellm prune --format compressed` output. For each, `prunellm bench-infer`'s
measurement (runtime/bench_infer.py: each variant in a child process of its own, so that its
peak memory is its own; batch 1, random prompt tokens, best of --repeats) gives the compressed
variant (the native kernels at decode, prefill expanding each layer per call). A DIR pruned by
`noop` gives the two dense rows (every layer expanded at load, in the stored dtype): decode
through torch's products ("dense-torch") and through the native kernels reading the dense
weights in place (prunellm's default on a CPU); "x dense" is against the faster. Perplexity is
the one the prune reported in DIR/report.json (measured on the stored values), file size the
directory's compressed.safetensors. --head-bits adds, per compressed DIR and bit width, a row with the output
head quantized at load too (`prunellm.load(..., head_bits=N)`: round to nearest, groups of 128),
as llama.cpp's types quantize theirs; its perplexity is not the report's, so none is shown.
--embed-bits N quantizes the input embeddings of those head rows too (`embed_bits=N`: a tied
head of the same bits shares its codes with them, and the float table goes from memory).
--int8-activations adds each head row again with int8 activations (`int8_activations=True`:
the 4- and 8-bit layers and the head on the int8 kernel, runtime/int8_activations.py); scored,
its windows' prefill rounds the activations as the kernel does.

--llama adds llama.cpp's own rows: each GGUF file's decode speed by `llama-bench` (-p 0 -n
NEW_TOKENS, the same threads, from $PRUNELLM_LLAMA_BIN), and with --llama-ppl its perplexity
scored by llama.cpp (llama-cpp-python) on the windows of the first DIR's report (same text,
tokenizer, window length and token count: like with like). The plot draws perplexity against
decode tokens/s and against the file size; with no perplexity in any row, decode tokens/s
against the weights held in memory.

--rounds N times every row, llama.cpp's included, N times in turn (all rows, then all again)
and keeps each row's fastest round, every round's tokens/s in the row's `decode_rounds` and in
the table. On a machine whose memory bandwidth moves between levels minutes apart (the Zen 5
VM of bench/README.md: 50 and 80 GB/s), --repeats alone times each row's runs within the same
minute, so one row can land wholly in a slow spell and another in a fast one; rounds spread
each row's runs over the whole run.

--score-only times nothing: it scores every row's perplexity on the model as it runs
(`prunellm.load`, the "+ head N-bit" rows with their head quantized, the dense row expanded)
and llama.cpp's files, on the first DIR's report's windows, into SCORES.json (given --ppl-from,
only the rows those files have not scored); --ppl-from then
puts those scores in the rows of a timing run. Scoring is not timed, so it can run while other
work does, and the quiet run that times stays short; the head rows get a perplexity of their
own (the report's is the prune's, with the head as stored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import textwrap
import sys
from pathlib import Path

import torch

from prunellm.io.atomic import write_json_atomic
from prunellm.runtime.bench_infer import InferConfig, compare, machine_description


def measure(directories: list[Path], config: InferConfig, head_bits: tuple[int, ...] = (),
            scores: dict | None = None, embed_bits: int | None = None, int8: bool = False) -> dict:
    """A directory pruned by `noop` (nothing compressed) gives the dense row, its perplexity
    the dense model's; every other one its compressed row, and per head_bits entry another one
    with the head quantized."""
    rows = []
    for directory in directories:
        report = json.loads((directory / "report.json").read_text())
        common = {"perplexity": report["perplexity"]["compressed"], "ppl_seqlen": report["perplexity"]["seqlen"],
                  "ppl_tokens": report["perplexity"]["max_tokens"], "directory": directory.name}
        if report["method"]["method"] == "noop":
            torch_row, kernel_row = compare(directory, config, ("dense-torch", "dense"))
            rows[:0] = [{"setting": "dense bf16 (torch)", **torch_row, **common, "file_bytes": None},
                        {"setting": "dense bf16 (kernels)", **kernel_row, **common, "file_bytes": None}]
            continue
        row = compare(directory, config, ("compressed",))[0]
        file_bytes = (directory / "compressed.safetensors").stat().st_size
        rows.append({"setting": describe(report["method"]), **row, **common, "file_bytes": file_bytes})
        for bits in head_bits:
            for rounded in [False, True] if int8 else [False]:
                row = compare(directory, dataclasses.replace(config, head_bits=bits, embed_bits=embed_bits,
                                                             int8_activations=rounded), ("compressed",))[0]
                extras = (f", embeddings {embed_bits}-bit" if embed_bits else "") + \
                    (", int8 activations" if rounded else "")
                rows.append({"setting": f"{describe(report['method'])} + head {bits}-bit{extras}", **row, **common,
                             "perplexity": {}, "file_bytes": file_bytes, "head_bits": bits, "embed_bits": embed_bits,
                             "int8_activations": rounded})
    if scores is not None:
        for row in rows:
            row["perplexity"] = _perplexity_of(scores, row)
            row["ppl_source"] = "as loaded"
    return {"machine": machine_description("cpu"), "config": vars(config), "rows": rows}


def best_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Each row's fastest round of several runs of the same rows (in the same order), with every
    round's decode tokens/s as `decode_rounds` (and the perplexity of the round that scored one:
    llama.cpp's files are scored in the first only)."""
    merged = []
    for same in zip(*rounds, strict=True):
        if len({row["setting"] for row in same}) != 1:
            raise ValueError(f"the rounds' rows differ: {sorted({row['setting'] for row in same})}")
        best = max(same, key=lambda row: row["decode_tokens_per_second"])
        scored = next((row["perplexity"] for row in same if row.get("perplexity")), best.get("perplexity", {}))
        merged.append({**best, "perplexity": scored,
                       "decode_rounds": [row["decode_tokens_per_second"] for row in same]})
    return merged


def _row_key(row: dict) -> str:
    """What names a row's model: its directory or GGUF file (with its bytes), the head's and the
    input embeddings' bits."""
    embeddings = f"|embeddings {row['embed_bits']}" if row.get("embed_bits") else ""
    embeddings += "|int8 activations" if row.get("int8_activations") else ""
    return f"{row['directory']}|{row['file_bytes'] or 0}|head {row.get('head_bits') or 'as stored'}{embeddings}"


def _perplexity_of(scores: dict, row: dict) -> dict:
    """A row's perplexity entry from --ppl-from's scores; {} where they have none (said on
    stderr: its perplexity column stays empty)."""
    key = _row_key(row)
    if key not in scores["scores"]:
        print(f"--ppl-from {scores['path']}: no score of {key}", file=sys.stderr)
        return {}
    return {"wikitext2": scores["scores"][key]}


def score_rows(directories: list[Path], head_bits: tuple[int, ...], llama_files: list[Path], threads: int,
               embed_bits: int | None = None, known: frozenset[str] = frozenset(), int8: bool = False) -> dict:
    """Every row's perplexity, nothing timed: each prunellm row on the model as `prunellm.load`
    runs it (the dense row expanded, the head rows with their head quantized), each GGUF file by
    llama.cpp, all on the first directory's report's windows; rows whose key is in `known`
    (scored before on the same windows) are left out."""
    import prunellm
    from prunellm.eval.perplexity import perplexity
    from prunellm.formats.gguf.llama_cpp import llama_cpp_perplexity

    windows, bos = _eval_windows(directories[0])  # (W, seqlen)
    ids = windows.flatten() if bos is None else windows[:, 1:].flatten()  # the text the windows hold
    scores = {}
    for directory in directories:
        noop = json.loads((directory / "report.json").read_text())["method"]["method"] == "noop"
        file_bytes = None if noop else (directory / "compressed.safetensors").stat().st_size
        variants = [(None, False)] if noop else [(None, False)] + [(bits, rounded) for bits in head_bits
                                                                   for rounded in ([False, True] if int8 else [False])]
        for bits, rounded in variants:
            embeddings = embed_bits if bits else None
            key = _row_key({"directory": directory.name, "file_bytes": file_bytes, "head_bits": bits,
                            "embed_bits": embeddings, "int8_activations": rounded})
            if key in known:
                continue
            # int8 activations: the prefill's expanded products round the activations as the
            # decode kernels do (runtime/int8_activations.py), so the windows score that model
            model = prunellm.load(directory, "cpu", head_bits=bits, embed_bits=embeddings, int8_activations=rounded)
            scores[key] = perplexity(model, ids, seqlen=windows.shape[1], bos_token_id=bos, progress=False)
            print(f"{key}: {scores[key]:.3f}", flush=True)
            del model
    for path in llama_files:
        key = _row_key({"directory": path.name, "file_bytes": path.stat().st_size})
        if key in known:
            continue
        scores[key] = llama_cpp_perplexity(path, windows, bos, threads=threads)
        print(f"{key}: {scores[key]:.3f}", flush=True)
    return {"windows": _window_settings(directories[0]), "scores": scores}


def _window_settings(directory: Path) -> dict:
    """What names the windows scored: the report's texts, window length and token count."""
    ppl = json.loads((directory / "report.json").read_text())["perplexity"]
    return {"texts": sorted(ppl["compressed"]), "seqlen": ppl["seqlen"], "max_tokens": ppl["max_tokens"]}


def read_scores(paths: list[Path], windows_from: Path | None) -> dict:
    """The scores of one or more --score-only runs together (checked to be on `windows_from`'s
    report's windows, where given)."""
    merged: dict[str, float] = {}
    for path in paths:
        scores = json.loads(path.read_text())
        if windows_from is not None and scores.get("windows") != _window_settings(windows_from):
            raise SystemExit(f"--ppl-from {path} scored other windows than {windows_from}'s report")
        merged.update(scores["scores"])
    return {"scores": merged, "path": ", ".join(map(str, paths))}


def llama_rows(files: list[Path], config: InferConfig, threads: int, windows_from: Path | None,
               scores: dict | None = None) -> list[dict]:
    """llama.cpp's decode speed of each GGUF file (llama-bench), and its perplexity on the
    windows of `windows_from`'s report when given (scored now, or from `scores`)."""
    binary = Path(os.environ.get("PRUNELLM_LLAMA_BIN", "")) / "llama-bench"
    if not binary.is_file():
        raise SystemExit(f"llama-bench not found at {binary}: `make llama-tools` builds it (PRUNELLM_LLAMA_BIN)")
    windows, bos = _eval_windows(windows_from) if windows_from is not None and scores is None else (None, None)
    rows = []
    for path in files:
        done = subprocess.run([str(binary), "-m", str(path), "-t", str(threads), "-p", "0", "-n",
                               str(config.new_tokens), "-r", str(max(config.repeats, 2)), "-o", "json"],
                              capture_output=True, text=True, check=True)
        (result,) = json.loads(done.stdout)
        row = {"setting": f"llama.cpp {_type_name(result['model_type'])}", "llama_cpp": True,
               "decode_tokens_per_second": result["avg_ts"], "file_bytes": path.stat().st_size,
               "weight_bytes": result["model_size"], "directory": path.name, "perplexity": {}}
        if scores is not None:
            row["perplexity"] = _perplexity_of(scores, row)
        elif windows is not None:
            from prunellm.formats.gguf.llama_cpp import llama_cpp_perplexity

            row["perplexity"] = {"wikitext2": llama_cpp_perplexity(path, windows, bos, threads=threads)}
        rows.append(row)
    return rows


def _type_name(model_type: str) -> str:
    """llama-bench's "llama 256M Q4_K - Medium" -> "Q4_K_M" (llama-quantize's name; Q2_K is "Q2_K - Medium")."""
    kind = " ".join(model_type.split()[2:])
    if kind == "Q2_K - Medium":
        return "Q2_K"
    return kind.replace(" - Small", "_S").replace(" - Medium", "_M").replace(" - Large", "_L")


def _eval_windows(directory: Path) -> tuple[torch.Tensor, int | None]:
    """The windows the prune of `directory` scored (its report's text, window and token count)."""
    from prunellm.compression import bos_for
    from prunellm.eval.evaluate import eval_token_ids
    from prunellm.eval.perplexity import eval_windows
    from prunellm.formats import load_model

    report = json.loads((directory / "report.json").read_text())
    model, tokenizer = load_model(directory)
    bos = bos_for(model, tokenizer)
    del model
    ppl = report["perplexity"]
    ids = eval_token_ids("wikitext2", tokenizer, seqlen=ppl["seqlen"], max_tokens=ppl["max_tokens"],
                         bos_token_id=bos)
    return eval_windows(ids, ppl["seqlen"], bos), bos


def describe(method: dict) -> str:
    pattern = f"{method['nm'][0]}:{method['nm'][1]}" if method.get("nm") else f"{method.get('sparsity', 0):.0%}"
    quant = f" + {method['bits']}-bit g{method['group_size']}" if (method.get("bits") or 16) < 16 else ""
    if method["method"] == "gptq":
        return f"GPTQ {method['bits']}-bit g{method['group_size']}"
    refine = method.get("refine") or "none"
    return f"{method['method']} {pattern}{quant}" + (f" + {refine.upper()}" if refine != "none" else "")


def table(result: dict) -> str:
    """The rows as a markdown table; with --rounds, a last column of every round's tokens/s."""
    rows = result["rows"]
    dense = max(row["decode_tokens_per_second"] for row in rows if row["setting"].startswith("dense"))
    rounds = any(len(row.get("decode_rounds", ())) > 1 for row in rows)
    lines = ["| setting | decode tok/s | × dense | prefill tok/s | weights MiB | run peak MiB | file MiB | ppl |"
             + (" rounds tok/s |" if rounds else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if rounds else "")]
    for row in rows:
        ppl = next(iter(row["perplexity"].values()), None) if row["perplexity"] else None
        file_mib = f"{row['file_bytes'] / 2**20:.1f}" if row["file_bytes"] else "–"
        prefill = f"{row['prefill_tokens_per_second']:.0f}" if "prefill_tokens_per_second" in row else "–"
        peak = f"{row['run_peak_memory_bytes'] / 2**20:.0f}" if "run_peak_memory_bytes" in row else "–"
        each = " / ".join(f"{value:.1f}" for value in row.get("decode_rounds", ()))
        lines.append(f"| {row['setting']} | {row['decode_tokens_per_second']:.1f} | "
                     f"{row['decode_tokens_per_second'] / dense:.2f} | {prefill} | {row['weight_bytes'] / 2**20:.1f} | "
                     f"{peak} | {file_mib} | {'–' if ppl is None else f'{ppl:.2f}'} |"
                     + (f" {each} |" if rounds else ""))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(row["setting"], row["decode_tokens_per_second"], (row["file_bytes"] or row["weight_bytes"]) / 2**20,
               next(iter(row["perplexity"].values())), row.get("llama_cpp", False))
              for row in result["rows"] if row["perplexity"]]
    if not points:  # no quality figures (speed-only rows): decode speed against the bytes held
        _plot_speed(result, path)
        return
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, speed, mib, ppl, llama in points:
        style = dict(marker="s", color="tab:gray") if llama else dict(marker="o", color="tab:blue")
        label = _short_label(name)
        axes[0].scatter(speed, ppl, **style)
        axes[0].annotate(label, (speed, ppl), fontsize=6, rotation=20)
        axes[1].scatter(mib, ppl, **style)
        axes[1].annotate(label, (mib, ppl), fontsize=6, rotation=20)
    axes[0].set(xlabel="decode tokens/s (batch 1)", ylabel="WikiText-2 perplexity", yscale="log")
    axes[1].set(xlabel="file MiB (dense rows: weights in memory)", ylabel="WikiText-2 perplexity", yscale="log")
    figure.suptitle(textwrap.fill(result["machine"], 90), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _short_label(setting: str) -> str:
    """A row's setting shortened for a plot's label: "+h4" the head in 4 bits, "e4" the
    embeddings, "+i8" int8 activations (the table spells them out)."""
    for long, short in ((" + head ", " +h"), ("-bit, embeddings ", "/e"), (", int8 activations", " +i8"),
                        ("sparsegpt ", "SG "), ("llama.cpp ", "llama "), (" g128", ""), (" + ALPS", "+ALPS")):
        setting = setting.replace(long, short)
    return setting.removesuffix("-bit")


def _plot_speed(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for row in result["rows"]:
        mib = row["weight_bytes"] / 2**20
        style = dict(marker="s", color="tab:gray") if row.get("llama_cpp") else dict(marker="o", color="tab:blue")
        axis.scatter(mib, row["decode_tokens_per_second"], **style)
        axis.annotate(row["setting"], (mib, row["decode_tokens_per_second"]), fontsize=6)
    axis.set(xlabel="weights MiB in memory", ylabel="decode tokens/s (batch 1)")
    figure.suptitle(textwrap.fill(result["machine"], 90), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def check_inputs(args: argparse.Namespace) -> None:
    """One line, before anything loads, for a path that cannot be what it is given as."""
    if args.from_json:
        if not args.directories[0].is_file():
            raise SystemExit(f"--from-json: {args.directories[0]} is not a file")
    else:
        for directory in args.directories:
            if not (directory / "report.json").is_file():
                raise SystemExit(f"{directory}: not a prunellm output directory (no report.json)")
        for path in args.llama:
            if not path.is_file() or _magic(path) != b"GGUF":
                raise SystemExit(f"--llama {path}: not a GGUF file")
    for path in args.ppl_from or []:
        if not path.is_file():
            raise SystemExit(f"--ppl-from {path}: no such file")
    if args.embed_bits and not args.head_bits:
        raise SystemExit("--embed-bits quantizes the embeddings of the --head-bits rows: give --head-bits")
    if args.int8_activations and not args.head_bits:
        raise SystemExit("--int8-activations adds a row per --head-bits row: give --head-bits")
    if args.rounds < 1 or args.repeats < 1:
        raise SystemExit(f"--rounds and --repeats count runs: at least 1 (got {args.rounds} and {args.repeats})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time all rows this many times in turn, each row's fastest round kept (see above)")
    parser.add_argument("--head-bits", type=int, nargs="+", choices=(8, 4), default=[],
                        help="also each compressed row with its head quantized to these bits")
    parser.add_argument("--embed-bits", type=int, choices=(8, 4), default=None,
                        help="with --head-bits: those rows' input embeddings quantized too")
    parser.add_argument("--int8-activations", action="store_true",
                        help="with --head-bits: each head row again with int8 activations (the opt-in int8 kernel)")
    parser.add_argument("--llama", type=Path, nargs="*", default=[], help="GGUF files for llama.cpp's rows")
    parser.add_argument("--llama-ppl", action="store_true", help="also score the GGUF files' perplexity")
    parser.add_argument("--score-only", action="store_true",
                        help="time nothing: score every row's perplexity as it runs into --out (see above)")
    parser.add_argument("--ppl-from", type=Path, nargs="+", metavar="SCORES",
                        help="each row's perplexity from --score-only runs' JSON (the same windows; a row "
                             "they did not score has none)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--from-json", action="store_true",
                        help="no run: print the table of the JSON given as the one DIR (and --plot it)")
    args = parser.parse_args(argv)
    check_inputs(args)
    if args.from_json:
        result = json.loads(args.directories[0].read_text())
        if args.ppl_from:  # scores that came after the timing run: into its rows, written back with --out
            scores = read_scores(args.ppl_from, None)
            for row in result["rows"]:
                row["perplexity"] = _perplexity_of(scores, row)
            if args.out:
                write_json_atomic(args.out, result)
        print(table(result))
        if args.plot:
            plot(result, args.plot)
        return 0
    if args.score_only:
        if not args.out:
            raise SystemExit("--score-only writes its scores to --out")
        # --ppl-from here: scores of earlier runs on the same windows, not scored again
        known = frozenset(read_scores(args.ppl_from, args.directories[0])["scores"]) if args.ppl_from else frozenset()
        result = score_rows(args.directories, args.head_bits, args.llama, torch.get_num_threads(), args.embed_bits,
                            known, args.int8_activations)
        write_json_atomic(args.out, result)
        return 0
    scores = read_scores(args.ppl_from, args.directories[0]) if args.ppl_from else None
    config = InferConfig(args.prompt_tokens, args.new_tokens, 1, args.repeats, "cpu")
    rounds = []
    for round_ in range(args.rounds):
        result = measure(args.directories, config, args.head_bits, scores, args.embed_bits, args.int8_activations)
        # llama.cpp's files are scored in the first round only (scores given: in none)
        windows_from = args.directories[0] if (args.llama_ppl and round_ == 0) or scores else None
        result["rows"] += llama_rows(args.llama, config, torch.get_num_threads(), windows_from, scores)
        rounds.append(result["rows"])
    if args.rounds > 1:
        result["rows"] = best_of_rounds(rounds)
        result["rounds"] = args.rounds
    print(result["machine"])
    print(table(result))
    if args.out:
        write_json_atomic(args.out, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

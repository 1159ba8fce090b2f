"""A whole model at decode on this CPU: prunellm's dense model against the same model kept
compressed on the native kernels, one row per compressed layout.

    python bench/cpu_model.py DIR [DIR ...] [--prompt-tokens 128] [--new-tokens 128] \
        [--out bench/results/cpu_model_smollm2.json] [--plot bench/results/cpu_model_smollm2.png]

Each DIR is a `prunellm prune --format compressed` output. For each, `prunellm bench-infer`'s
measurement (runtime/bench_infer.py: each variant in a child process of its own, so that its
peak memory is its own; batch 1, random prompt tokens, best of --repeats) gives the compressed
variant (the native kernels at decode, prefill expanding each layer per call). A DIR pruned by
`noop` gives the dense row (every layer expanded at load, in the stored dtype). Perplexity is the one the prune
reported in DIR/report.json (measured on the stored values), file size the directory's
compressed.safetensors. The plot draws perplexity against decode tokens/s and against the
weights' memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunellm.runtime.bench_infer import InferConfig, compare, machine_description


def measure(directories: list[Path], config: InferConfig) -> dict:
    """A directory pruned by `noop` (nothing compressed) gives the dense row, its perplexity
    the dense model's; every other one its compressed row."""
    rows = []
    for directory in directories:
        report = json.loads((directory / "report.json").read_text())
        common = {"perplexity": report["perplexity"]["compressed"], "ppl_seqlen": report["perplexity"]["seqlen"],
                  "ppl_tokens": report["perplexity"]["max_tokens"], "directory": directory.name}
        if report["method"]["method"] == "noop":
            row = compare(directory, config, ("dense",))[0]
            rows.insert(0, {"setting": "dense", **row, **common, "file_bytes": None})
            continue
        row = compare(directory, config, ("compressed",))[0]
        rows.append({"setting": describe(report["method"]), **row, **common,
                     "file_bytes": (directory / "compressed.safetensors").stat().st_size})
    return {"machine": machine_description("cpu"), "config": vars(config), "rows": rows}


def describe(method: dict) -> str:
    pattern = f"{method['nm'][0]}:{method['nm'][1]}" if method.get("nm") else f"{method.get('sparsity', 0):.0%}"
    quant = f" + {method['bits']}-bit g{method['group_size']}" if (method.get("bits") or 16) < 16 else ""
    if method["method"] == "gptq":
        return f"GPTQ {method['bits']}-bit g{method['group_size']}"
    return f"{method['method']} {pattern}{quant}"


def table(result: dict) -> str:
    rows = result["rows"]
    dense = next(row for row in rows if row["setting"] == "dense")
    lines = ["| setting | decode tok/s | × dense | prefill tok/s | weights MiB | run peak MiB | file MiB | ppl |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ppl = next(iter(row["perplexity"].values()), None) if row["perplexity"] else None
        file_mib = f"{row['file_bytes'] / 2**20:.1f}" if row["file_bytes"] else "–"
        lines.append(f"| {row['setting']} | {row['decode_tokens_per_second']:.1f} | "
                     f"{row['decode_tokens_per_second'] / dense['decode_tokens_per_second']:.2f} | "
                     f"{row['prefill_tokens_per_second']:.0f} | {row['weight_bytes'] / 2**20:.1f} | "
                     f"{row['run_peak_memory_bytes'] / 2**20:.0f} | {file_mib} | "
                     f"{'–' if ppl is None else f'{ppl:.2f}'} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(row["setting"], row["decode_tokens_per_second"], row["weight_bytes"] / 2**20,
               next(iter(row["perplexity"].values()))) for row in result["rows"] if row["perplexity"]]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, speed, mib, ppl in points:
        axes[0].scatter(speed, ppl)
        axes[0].annotate(name, (speed, ppl), fontsize=7)
        axes[1].scatter(mib, ppl)
        axes[1].annotate(name, (mib, ppl), fontsize=7)
    axes[0].set(xlabel="decode tokens/s (batch 1)", ylabel="WikiText-2 perplexity", yscale="log")
    axes[1].set(xlabel="weights in memory, MiB", ylabel="WikiText-2 perplexity", yscale="log")
    figure.suptitle(result["machine"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    config = InferConfig(args.prompt_tokens, args.new_tokens, 1, args.repeats, "cpu")
    result = measure(args.directories, config)
    print(result["machine"])
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

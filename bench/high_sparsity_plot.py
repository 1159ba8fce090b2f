"""Merge the JSON files of `bench/high_sparsity.py` runs into one table and one plot.

A model's rows come from several runs (a sparsity or a few variants at a time); this script
joins them, later files replacing earlier ones for the same setting and variant, labels OWL
rows with the λ their run used, and prints per model a Markdown table: perplexity, change
against plain SparseGPT at the same setting, prune time and its ratio to plain SparseGPT's.
The ratio is taken within one file where that file has a SparseGPT row (the same run, the
same machine load), else against the model's latest SparseGPT row. The plot has one panel per
model: WikiText-2 perplexity (log scale) against sparsity, one line per variant, 2:4 as a
column of its own.

    python bench/high_sparsity_plot.py \\
        --results "SmolLM2-135M=bench/results/high_sparsity_smollm2_*.json,bench/results/hs_smollm2_*.json" \\
        --results "Gemma-3-270M=bench/results/hs_gemma_*.json" --plot bench/results/high_sparsity.png
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

# Files written before the script recorded its OWL settings ran with its default of then.
OWL_DEFAULT_BEFORE_HEADER = (0.08, 5.0, "block")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="append", required=True,
                        help="NAME=GLOB[,GLOB...]: a model's label and its result files; repeatable")
    parser.add_argument("--plot", default=None, help="write the plot (PNG) here")
    parser.add_argument("--plot-variants", default=None, help="comma-separated variant labels to draw (default all)")
    args = parser.parse_args()

    models: dict[str, list[dict[str, Any]]] = {}
    for spec in args.results:
        name, _, patterns = spec.partition("=")
        files = sorted({f for pattern in patterns.split(",") for f in glob.glob(pattern)}, key=lambda f: Path(f).stat().st_mtime)
        if not files:
            raise SystemExit(f"no result files match {patterns!r}")
        models[name] = merge_rows(files)
    for name, rows in models.items():
        print(f"\n**{name}** (dense {next(r['ppl'] for r in rows if r['setting'] == 'dense'):.2f})\n")
        print(markdown_table(rows))
    if args.plot:
        plot(models, Path(args.plot), args.plot_variants.split(",") if args.plot_variants else None)
        print(f"\nplot: {args.plot}")


def merge_rows(files: list[str]) -> list[dict[str, Any]]:
    """Rows of every file, oldest file first, each labelled and tagged with its file; a later
    file's row replaces an earlier one with the same setting and label."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        data = json.loads(Path(path).read_text())
        owl = data.get("owl") or OWL_DEFAULT_BEFORE_HEADER
        # Plain SparseGPT's time in this run, per setting: the ratio's base for this file's rows
        # even where a later run's SparseGPT row replaces this one in the table.
        base_seconds = {r["setting"]: r["seconds"] for r in data["rows"] if r["variant"] == "SparseGPT"}
        for row in data["rows"]:
            label = variant_label(row["variant"], owl)
            merged[(row["setting"], label)] = {**row, "label": label, "file": path,
                                               "base_seconds": base_seconds.get(row["setting"])}
    return list(merged.values())


def variant_label(variant: str, owl: list | tuple) -> str:
    if "OWL" not in variant:
        return variant
    extra = f"λ {owl[0]:g}" + (", one ratio per layer" if owl[2] == "layer" else "")
    return variant.replace("OWL", f"OWL ({extra})")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | variant | WikiText-2 ppl | vs SparseGPT | prune time (s) | × SparseGPT's time |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for setting in sorted({r["setting"] for r in rows if r["setting"] != "dense"}, key=setting_order):
        here = [r for r in rows if r["setting"] == setting]
        base = next((r for r in here if r["label"] == "SparseGPT"), None)
        for row in sorted(here, key=lambda r: (r["label"] != "SparseGPT", r["label"])):
            change = "–" if base is None or row is base else f"{row['ppl'] / base['ppl'] - 1:+.1%}"
            ratio = "–" if base is None or row is base else f"{row['seconds'] / time_base(row, base):.2f}"
            lines.append(f"| {setting} | {row['label']} | {row['ppl']:.2f} | {change} | {row['seconds']:.1f} | {ratio} |")
    return "\n".join(lines)


def time_base(row: dict[str, Any], latest: dict[str, Any]) -> float:
    """Plain SparseGPT's prune time from the same run when it has one (same machine load)."""
    return row["base_seconds"] if row.get("base_seconds") is not None else latest["seconds"]


def setting_order(setting: str) -> tuple[int, float]:
    return (1, 0.0) if ":" in setting else (0, float(setting.rstrip("%")))


def plot(models: dict[str, list[dict[str, Any]]], path: Path, only: list[str] | None = None) -> None:
    """One panel per model: perplexity (log) per variant over the settings, 2:4 as its own column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    figure = Figure(figsize=(5.5 * len(models), 4.4))
    canvas = FigureCanvasAgg(figure)
    every_label = sorted({r["label"] for rows in models.values() for r in rows if r["setting"] != "dense"},
                         key=lambda l: (l != "SparseGPT", l))
    colors = {label: f"C{index % 10}" for index, label in enumerate(every_label)}  # one colour per variant
    for index, (name, rows) in enumerate(models.items()):
        axes = figure.add_subplot(1, len(models), index + 1)
        rows = [r for r in rows if r["setting"] == "dense" or only is None or r["label"] in only]
        settings = sorted({r["setting"] for r in rows if r["setting"] != "dense"}, key=setting_order)
        x = {setting: position for position, setting in enumerate(settings)}
        dense = next(r["ppl"] for r in rows if r["setting"] == "dense")
        axes.axhline(dense, color="grey", linestyle=":", label=f"dense ({dense:.1f})")
        labels = sorted({r["label"] for r in rows if r["setting"] != "dense"}, key=lambda l: (l != "SparseGPT", l))
        for label in labels:
            mine = sorted(((x[r["setting"]], r["ppl"], r["setting"]) for r in rows if r["label"] == label),
                          key=lambda point: point[0])
            unstructured = [(px, py) for px, py, setting in mine if setting.endswith("%")]
            patterns = [(px, py) for px, py, setting in mine if not setting.endswith("%")]
            color = colors[label]
            if unstructured:
                axes.plot(*zip(*unstructured), marker="o", label=label, color=color)
            if patterns:  # n:m: no line into it, it is not a higher sparsity
                axes.plot(*zip(*patterns), marker="s", linestyle="none", color=color,
                          label=None if unstructured else label)
        axes.set_xticks(range(len(settings)), settings)
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("sparsity")
        axes.set_ylabel("WikiText-2 perplexity (log scale)")
        axes.set_title(name)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    canvas.print_png(str(tmp))
    tmp.replace(path)


if __name__ == "__main__":
    main()

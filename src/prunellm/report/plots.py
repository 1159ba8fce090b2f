"""The figures of a sweep and of a single run, drawn with matplotlib's Agg canvas (no display,
no pyplot state) and written as PNG through a temporary file and a rename.

- perplexity vs sparsity per method, log y (the SparseGPT paper's Figure 1, for one model);
- zero-shot accuracy vs sparsity per method;
- relative reconstruction error tr((W-Ŵ)H(W-Ŵ)ᵀ)/tr(WHWᵀ) per layer and setting (heatmap);
- for one run: the error (and, when it varies, the sparsity) per block and layer role.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_path
from ..sweep.results import SweepResults, short_name
from .format import finite, model_name

DPI = 110
_MARKERS = ("s", "^", "D", "v", "P", "X")  # n:m patterns, one marker each


def sweep_plots(results: SweepResults, out_dir: str | Path) -> dict[str, Path]:
    """Every figure the sweep's rows allow, as {name: path}: perplexity, accuracy, layer_errors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if any(r.get("perplexity") for r in results.rows):
        plots["perplexity"] = perplexity_plot(results, out / "perplexity.png")
    if any(r.get("zero_shot") for r in results.rows):
        plots["accuracy"] = accuracy_plot(results, out / "accuracy.png")
    if any(layer.get("relative_error") is not None for r in results.compressed for layer in r.get("layers", [])):
        plots["layer_errors"] = layer_error_heatmap(results, out / "layer_errors.png")
    return plots


def run_plots(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Figures of one `prunellm prune` run (its report.json): error, and sparsity if it varies,
    per block and layer role."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = report.get("layers", [])
    plots: dict[str, Path] = {}
    if any(layer.get("relative_error") is not None for layer in layers):
        plots["layer_errors"] = block_role_heatmap(layers, "relative_error", out / "layer_errors.png",
                                                   "relative reconstruction error", log_scale=True)
    sparsities = {round(layer["sparsity"], 3) for layer in layers}
    if len(sparsities) > 1:
        plots["layer_sparsity"] = block_role_heatmap(layers, "sparsity", out / "layer_sparsity.png",
                                                     "sparsity", log_scale=False)
    return plots


def perplexity_plot(results: SweepResults, path: Path) -> Path:
    """One panel per evaluation text: a line per method over unstructured sparsity, a marker per
    n:m pattern, the dense model as a dashed line; log y."""
    figure, canvas = _figure()
    datasets = list(dict.fromkeys(name for r in results.rows for name in r.get("perplexity", {})))
    colors = _method_colors(results)
    seqlen = results.spec.get("evaluation", {}).get("seqlen")
    for index, name in enumerate(datasets):
        axes = figure.add_subplot(1, len(datasets), index + 1)
        _draw_metric(axes, results, colors, lambda r: r.get("perplexity", {}).get(name))
        axes.set_yscale("log")
        _plain_log_ticks(axes)
        axes.set_ylabel("perplexity (log scale)")
        axes.set_title(f"{short_name(name)}" + (f", seqlen {seqlen}" if seqlen else ""))
    figure.set_size_inches(max(8.0, 7.0 * len(datasets)), 4.4)
    figure.suptitle(f"Perplexity vs sparsity: {model_name(results.model.get('source'))}", fontsize=11)
    return _save(figure, canvas, path)


def accuracy_plot(results: SweepResults, path: Path) -> Path:
    """One panel per zero-shot task: accuracy (acc) vs sparsity, a line per method."""
    figure, canvas = _figure()
    tasks = list(dict.fromkeys(task for r in results.rows for task in r.get("zero_shot", {})))
    colors = _method_colors(results)
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), index + 1)
        metric = _accuracy_metric(results, task)
        _draw_metric(axes, results, colors,
                     lambda r: r.get("zero_shot", {}).get(task, {}).get("metrics", {}).get(metric))
        axes.set_ylim(0.0, 1.0)
        axes.set_ylabel(metric)
        samples = (results.dense or {}).get("zero_shot", {}).get(task, {}).get("samples")
        axes.set_title(task + (f" ({samples} items)" if samples else ""))
    figure.set_size_inches(max(8.0, 7.0 * len(tasks)), 4.4)
    figure.suptitle(f"Zero-shot accuracy vs sparsity: {model_name(results.model.get('source'))}", fontsize=11)
    return _save(figure, canvas, path)


def layer_error_heatmap(results: SweepResults, path: Path) -> Path:
    """Layers (rows, in model order) x settings (columns): relative error, log colour scale."""
    import numpy as np
    from matplotlib.colors import LogNorm

    rows = [r for r in results.compressed if any(layer.get("relative_error") is not None for layer in r["layers"])]
    names = list(dict.fromkeys(layer["name"] for r in rows for layer in r["layers"]))
    blocks = {layer["name"]: layer["block"] for r in rows for layer in r["layers"]}
    matrix = np.full((len(names), len(rows)), np.nan)  # (layers, settings)
    for column, row in enumerate(rows):
        for layer in row["layers"]:
            if finite(layer.get("relative_error")):
                matrix[names.index(layer["name"]), column] = layer["relative_error"]
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    low, high = (float(positive.min()), float(positive.max())) if positive.size else (1e-6, 1.0)
    figure, canvas = _figure()
    per_row = 0.14 if len(names) <= 60 else 0.045  # inches: room for a name, or only for a colour
    figure.set_size_inches(min(24.0, max(6.5, 2.5 + 0.42 * len(rows))), min(30.0, max(4.5, 1.8 + per_row * len(names))))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(np.ma.masked_invalid(matrix), aspect="auto", interpolation="nearest", cmap="viridis",
                        norm=LogNorm(vmin=max(low, 1e-8), vmax=max(high, low * 1.0001, 1e-8)))
    axes.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=60, ha="right", fontsize=8)
    ticks, labels = _layer_ticks(names, blocks)
    axes.set_yticks(ticks, labels, fontsize=7 if len(names) <= 60 else 8)
    axes.set_ylabel("layer (model order)")
    figure.colorbar(image, ax=axes, label="relative error (log scale)", fraction=0.05, pad=0.02)
    axes.set_title(f"Reconstruction error per layer: {model_name(results.model.get('source'))}", fontsize=11)
    return _save(figure, canvas, path)


def block_role_heatmap(layers: list[dict[str, Any]], field: str, path: Path, label: str, *, log_scale: bool) -> Path:
    """Blocks (rows) x layer roles (columns, e.g. self_attn.q_proj) of one run's per-layer `field`."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    roles = list(dict.fromkeys(_role(layer) for layer in layers))
    blocks = sorted({layer["block"] for layer in layers})
    matrix = np.full((len(blocks), len(roles)), np.nan)  # (blocks, roles)
    for layer in layers:
        if finite(layer.get(field)):
            matrix[blocks.index(layer["block"]), roles.index(_role(layer))] = layer[field]
    values = matrix[np.isfinite(matrix)]
    if log_scale:
        values = values[values > 0]
        low, high = (float(values.min()), float(values.max())) if values.size else (1e-6, 1.0)
        norm = LogNorm(vmin=max(low, 1e-8), vmax=max(high, low * 1.0001, 1e-8))
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        norm = Normalize(vmin=low, vmax=high)
    figure, canvas = _figure()
    figure.set_size_inches(max(6.5, 2.5 + 0.9 * len(roles)), min(30.0, max(4.0, 1.5 + 0.22 * len(blocks))))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(np.ma.masked_invalid(matrix), aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    axes.set_xticks(range(len(roles)), roles, rotation=40, ha="right", fontsize=8)
    step = max(1, len(blocks) // 16)
    axes.set_yticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]], fontsize=8)
    axes.set_ylabel("block")
    figure.colorbar(image, ax=axes, label=label, fraction=0.05, pad=0.02)
    axes.set_title(f"{label.capitalize()} per layer", fontsize=11)
    return _save(figure, canvas, path)


def _draw_metric(axes: Any, results: SweepResults, colors: dict[str, Any], value: Any) -> None:
    """Lines (unstructured sparsity) and markers (n:m) per series, plus the dense reference."""
    series: dict[str, tuple[str, bool, list[tuple[float, float]]]] = {}  # name -> (method, quantized, points)
    patterns = list(dict.fromkeys(r["nm"] for r in results.compressed if r.get("nm")))
    for row in results.compressed:
        y = value(row)
        if not finite(y):
            continue
        x = 100.0 * row["target_sparsity"]
        method_color = colors[row["method"]]
        if row.get("nm"):
            marker = _MARKERS[patterns.index(row["nm"]) % len(_MARKERS)]
            quantized = row.get("bits") is not None  # hollow, as quantized lines are dashed
            axes.scatter([x], [y], marker=marker, s=55, facecolors="none" if quantized else method_color,
                         edgecolors=method_color if quantized else "black", linewidths=1.4 if quantized else 0.6,
                         zorder=3, label=row["label"])
        else:
            name = row.get("series", row["method"])
            series.setdefault(name, (row["method"], row.get("bits") is not None, []))[2].append((x, y))
    for name, (method, quantized, points) in series.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, color=colors[method],
                  linestyle="--" if quantized else "-", label=name)
    xs = sorted({100.0 * r["target_sparsity"] for r in results.compressed if finite(value(r))})
    if xs:
        axes.set_xticks(xs, [f"{x:g}" for x in xs])  # ticks at the sparsities measured
    dense = value(results.dense) if results.dense is not None else None
    if finite(dense):
        axes.axhline(dense, color="0.35", linestyle=":", linewidth=1.2, label=f"dense ({dense:.4g})")
    axes.set_xlabel("sparsity of the compressed layers (%)")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        # Beside the axes: with many series a legend inside hides the lines it names.
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _plain_log_ticks(axes: Any) -> None:
    """Log-axis labels as plain numbers (30, 100, 2000), minor ones too when the range is narrow."""
    from matplotlib.ticker import LogFormatter

    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _accuracy_metric(results: SweepResults, task: str) -> str:
    metrics = [m for r in results.rows for m in r.get("zero_shot", {}).get(task, {}).get("metrics", {})]
    return "acc" if "acc" in metrics else (metrics[0] if metrics else "acc")


def _method_colors(results: SweepResults) -> dict[str, Any]:
    """The same colour for a method in every figure (matplotlib's default cycle, in order of appearance)."""
    from matplotlib import rcParams

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(r["method"] for r in results.compressed))
    return {method: cycle[index % len(cycle)] for index, method in enumerate(methods)}


def _layer_ticks(names: list[str], blocks: dict[str, int]) -> tuple[list[int], list[str]]:
    """Every layer named when few; otherwise the first layer of each block (of some blocks when many)."""
    if len(names) <= 60:
        return list(range(len(names))), [f"{blocks[n]}.{_role({'name': n, 'block': blocks[n]})}" for n in names]
    firsts = [i for i, n in enumerate(names) if i == 0 or blocks[n] != blocks[names[i - 1]]]
    step = max(1, math.ceil(len(firsts) / 30))
    chosen = firsts[::step]
    return chosen, [f"block {blocks[names[i]]}" for i in chosen]


def _role(layer: dict[str, Any]) -> str:
    """'self_attn.q_proj' for model.layers.3.self_attn.q_proj (the name after its block's index)."""
    marker = f".{layer['block']}."
    return layer["name"].split(marker, 1)[1] if marker in layer["name"] else layer["name"]


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _save(figure: Any, canvas: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        canvas.print_figure(tmp, format="png", dpi=DPI)
    return path

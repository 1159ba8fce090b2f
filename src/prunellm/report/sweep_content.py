"""The page of a sweep: its settings, a paper-style table per metric (rows: sparsity or
pattern, columns: methods, the best in bold), the figures and every row in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..sweep.results import SweepResults, mean_layer_error, short_name
from .format import MISSING, accuracy, finite, model_name, number, percent, perplexity, plain, seconds
from .page import Facts, Figure, Page, Section, Table, Text

PPL_NOTE = ("Perplexity: exp(mean next-token NLL) over non-overlapping windows of the test text (the SparseGPT, "
            "Wanda and GPTQ protocol); lower is better.")
ERROR_NOTE = ("Relative reconstruction error of a layer: tr((W-Ŵ) H (W-Ŵ)ᵀ) / tr(W H Wᵀ), H = 2/N XᵀX of its "
              "calibration inputs (as compressed blocks feed them): the share of the layer's output energy lost.")


def sweep_page(results: SweepResults, plots: dict[str, Path]) -> Page:
    dense = results.dense or {}
    done = len(results.compressed)
    requested = [s["key"] for s in results.settings]
    missing = [s["label"] for s in results.settings if results.row(s["key"]) is None]
    subtitle = f"{done} compressed setting{'s' if done != 1 else ''}, updated {results.updated or results.created}"
    sections = [Section("Settings", [Facts(_settings(results))])]
    if missing:
        sections[0].blocks.append(Text(f"Incomplete: {len(missing)} of {len(requested)} requested settings have no "
                                       f"result yet ({', '.join(missing)}); `prunellm sweep ... --resume` finishes "
                                       "them."))

    datasets = list(dict.fromkeys(name for r in results.rows for name in r.get("perplexity", {})))
    if datasets:
        blocks: list[Any] = [Text(PPL_NOTE)]
        for name in datasets:
            blocks.append(_pivot(results, lambda r, n=name: r.get("perplexity", {}).get(n), perplexity,
                                 lower_is_better=True,
                                 caption=f"Perplexity on {short_name(name)} (lower is better; best per row in bold)"))
        if "perplexity" in plots:
            blocks.append(Figure(plots["perplexity"], "Perplexity vs sparsity",
                                 "Lines: unstructured sparsity per method; markers: n:m patterns; dotted: dense. "
                                 "Log scale, as in the SparseGPT paper's Figure 1."))
        sections.append(Section("Perplexity", blocks))

    tasks = list(dict.fromkeys(task for r in results.rows for task in r.get("zero_shot", {})))
    if tasks:
        blocks = []
        for task in tasks:
            metric = "acc" if "acc" in dense.get("zero_shot", {}).get(task, {}).get("metrics", {}) else None
            metric = metric or next(iter(dense.get("zero_shot", {}).get(task, {}).get("metrics", {})), "acc")
            samples = dense.get("zero_shot", {}).get(task, {}).get("samples")

            def value(row: dict[str, Any], task: str = task, metric: str = metric) -> Any:
                return row.get("zero_shot", {}).get(task, {}).get("metrics", {}).get(metric)

            def text(row_value: Any, row: dict[str, Any] | None = None, task: str = task, metric: str = metric) -> str:
                stderr = (row or {}).get("zero_shot", {}).get(task, {}).get("stderr", {}).get(metric)
                return accuracy(row_value, stderr)

            blocks.append(_pivot(results, value, text, lower_is_better=False, with_row=True,
                                 caption=f"{task}: {metric}" + (f" over {samples} items" if samples else "")
                                 + " (± standard error; best per row in bold)"))
        if "accuracy" in plots:
            blocks.append(Figure(plots["accuracy"], "Zero-shot accuracy vs sparsity",
                                 "lm-evaluation-harness, log-likelihood of each choice; dotted: dense."))
        sections.append(Section("Zero-shot accuracy", blocks))

    if "layer_errors" in plots:
        sections.append(Section("Reconstruction error per layer", [
            Text(ERROR_NOTE),
            _pivot(results, mean_layer_error, number, lower_is_better=True, skip_dense=True,
                   caption="Mean relative error over the compressed layers (lower is better)"),
            Figure(plots["layer_errors"], "Relative error per layer and setting",
                   "Rows: layers in model order (top: first block); columns: settings; log colour scale. "
                   "Bright rows are the layers a setting hurts most.")]))

    sections.append(Section("All results", [_full_table(results)]))
    return Page(f"Sparsity sweep: {model_name(results.model.get('source'))}", subtitle, sections)


def _settings(results: SweepResults) -> list[tuple[str, str]]:
    spec, model = results.spec, results.model
    settings = results.settings
    calibration = spec.get("calibration", {})
    evaluation = spec.get("evaluation", {})
    walk = spec.get("walk", {})
    items = [
        ("model", f"{model.get('source')} ({model.get('class')}, {number(model.get('parameters'))} parameters)"),
        ("methods", plain(list(dict.fromkeys(s["method"] for s in settings)))),
        ("sparsities", plain([f"{100 * x:g}%" for x in sorted({s["target_sparsity"] for s in settings
                                                                 if not s.get("nm")})])),
        ("n:m patterns", plain(list(dict.fromkeys(s["nm"] for s in settings if s.get("nm"))))),
        ("quantization", plain(list(dict.fromkeys(_quantization(s) for s in settings)))),
        ("calibration", f"{calibration.get('num_samples')} windows of {calibration.get('seqlen')} tokens from "
                        f"{calibration.get('source')}, seed {calibration.get('seed')}"),
        ("perplexity on", f"{plain(evaluation.get('datasets'))}, seqlen {evaluation.get('seqlen')}"
                          + (f", first {number(evaluation.get('max_tokens'))} tokens" if evaluation.get("max_tokens")
                             else ", whole text")),
    ]
    zero_shot = spec.get("zero_shot")
    if zero_shot:
        shots = zero_shot.get("num_fewshot")
        limit = zero_shot.get("limit")
        items.append(("zero-shot tasks", plain(zero_shot.get("tasks")) + (f", {shots}-shot" if shots else "")
                      + (f", first {limit} items" if limit else "")))
    last = walk.get("last_block")
    items.append(("blocks compressed", f"{walk.get('first_block', 0)} to {'last' if last is None else last}"
                  + (", true sequential" if walk.get("true_sequential") else "")))
    if walk.get("include") or walk.get("exclude"):
        items.append(("layers", f"include {plain(walk.get('include'))}; exclude {plain(walk.get('exclude'))}"))
    versions = results.versions
    items.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    return items


def _quantization(setting: dict[str, Any]) -> str:
    if not setting.get("bits"):
        return "none"
    return f"{setting['bits']}-bit" + (f", groups of {setting['group_size']}" if setting.get("group_size") else "")


def _pattern(setting: dict[str, Any]) -> str:
    return setting["nm"] if setting.get("nm") else f"{100 * setting['target_sparsity']:g}%"


def _pivot(results: SweepResults, value: Callable[[dict[str, Any]], Any], text: Callable[..., str], *,
           lower_is_better: bool, caption: str, with_row: bool = False, skip_dense: bool = False) -> Table:
    """Rows: dense, then each sparsity or pattern (in increasing sparsity); columns: each series
    (method, with its quantization); the best finite value of each row in bold."""
    rows = results.compressed
    series = list(dict.fromkeys(r.get("series", r["method"]) for r in rows))
    patterns = sorted(dict.fromkeys(_pattern(r) for r in rows),
                      key=lambda p: (":" in p, _sparsity_of(p, rows)))
    cells: list[list[str]] = []
    bold: set[tuple[int, int]] = set()

    def show(v: Any, row: dict[str, Any] | None) -> str:
        return text(v, row) if with_row else text(v)

    if not skip_dense and results.dense is not None:
        dense_value = value(results.dense)
        cells.append(["dense"] + [show(dense_value, results.dense)] * len(series))
    for pattern in patterns:
        line = [pattern]
        values = []
        for name in series:
            row = next((r for r in rows if _pattern(r) == pattern and r.get("series", r["method"]) == name), None)
            v = value(row) if row is not None else None
            values.append(v)
            line.append(show(v, row) if row is not None else MISSING)
        finite_values = [v for v in values if finite(v)]
        if len(set(finite_values)) > 1:  # a best among equals says nothing
            best = min(finite_values) if lower_is_better else max(finite_values)
            bold |= {(len(cells), 1 + i) for i, v in enumerate(values) if v == best}
        cells.append(line)
    return Table(["sparsity"] + series, cells, caption, [False] + [True] * len(series), bold)


def _sparsity_of(pattern: str, rows: list[dict[str, Any]]) -> float:
    return next(r["target_sparsity"] for r in rows if _pattern(r) == pattern)


def _full_table(results: SweepResults) -> Table:
    datasets = list(dict.fromkeys(name for r in results.rows for name in r.get("perplexity", {})))
    tasks = list(dict.fromkeys(task for r in results.rows for task in r.get("zero_shot", {})))
    columns = ["setting", "achieved sparsity", "mean layer error"]
    columns += [f"ppl {short_name(n)}" for n in datasets] + [f"{t} acc" for t in tasks]
    columns += ["prune time", "eval time"]
    cells = []
    for row in results.rows:
        line = [row["label"], percent(row.get("achieved_sparsity"), 2), number(mean_layer_error(row))]
        line += [perplexity(row.get("perplexity", {}).get(n)) for n in datasets]
        for task in tasks:
            score = row.get("zero_shot", {}).get(task, {})
            metric = "acc" if "acc" in score.get("metrics", {}) else next(iter(score.get("metrics", {})), "acc")
            line.append(accuracy(score.get("metrics", {}).get(metric), score.get("stderr", {}).get(metric)))
        line += [seconds(row.get("seconds", {}).get("prune")), seconds(row.get("seconds", {}).get("eval"))]
        cells.append(line)
    return Table(columns, cells, "Every setting (results.csv has the same rows, unrounded)",
                 [False] + [True] * (len(columns) - 1))

"""The page of one `prunellm prune` run (its report.json): settings, dense against compressed
perplexity, timings, per-layer figures and the per-layer table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sweep.results import short_name
from .format import MISSING, finite, model_name, number, percent, perplexity, plain, seconds
from .page import Facts, Figure, Page, Section, Table, Text
from .sweep_content import ERROR_NOTE, PPL_NOTE


def run_page(report: dict[str, Any], plots: dict[str, Path]) -> Page:
    method = report.get("method", {})
    name = method.get("method", "?")
    model = report.get("model", {})
    sections = [Section("Settings", [Facts(settings_items(report))])]

    scores = report.get("perplexity", {})
    results: list[Any] = []
    if scores.get("compressed"):
        results += [Text(PPL_NOTE), perplexity_table(scores, name)]
    sparsity = report.get("sparsity", {})
    results.append(Facts([("sparsity of the compressed layers", percent(sparsity.get("compressed_layers"), 2)),
                          ("layers compressed", plain(sparsity.get("layers"))),
                          *[(f"time: {k.replace('_', ' ')}", seconds(v))
                            for k, v in report.get("seconds", {}).items()]]))
    sections.append(Section("Results", results))

    layers = report.get("layers", [])
    figures: list[Any] = [Text(ERROR_NOTE)] if any(finite(layer.get("relative_error")) for layer in layers) else []
    if "layer_errors" in plots:
        figures.append(Figure(plots["layer_errors"], "Relative error per block and layer",
                              "Rows: blocks (top: first); columns: layer roles; log colour scale."))
    if "layer_sparsity" in plots:
        figures.append(Figure(plots["layer_sparsity"], "Sparsity per block and layer",
                              "The sparsity each layer was given (an allocation such as OWL varies it)."))
    if layers:
        figures.append(_layer_table(layers))
    sections.append(Section("Per layer", figures))
    subtitle = f"created {report.get('created', MISSING)}"
    return Page(f"{name} on {model_name(model.get('source'))}", subtitle, sections)


def settings_items(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's settings as (name, value) lines: model, method, calibration, blocks, allocation, versions."""
    model = report.get("model", {})
    method = report.get("method", {})
    options = method_options(method)
    calibration = report.get("calibration", {})
    walk = report.get("walk", {})
    allocation = report.get("allocation", {})
    last = walk.get("last_block")
    items = [
        ("model", f"{model.get('source')} ({model.get('class')}, {number(model.get('parameters'))} parameters)"),
        ("method", f"{method.get('method')} ({options})"),
        ("calibration", f"{calibration.get('num_samples')} windows of {calibration.get('seqlen')} tokens from "
                        f"{calibration.get('source')}, seed {calibration.get('seed')}"),
        ("blocks compressed", f"{walk.get('first_block', 0)} to {'last' if last is None else last}"
                              + (", true sequential" if walk.get("true_sequential") else "")),
        ("allocation", plain(allocation.get("kind", "uniform"))),
    ]
    if walk.get("include") or walk.get("exclude"):
        items.append(("layers", f"include {plain(walk.get('include'))}; exclude {plain(walk.get('exclude'))}"))
    if model.get("gguf_file"):
        items.append(("GGUF source", str(model["gguf_file"])))
    items.append(("versions", ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items() if v)))
    return items


def perplexity_table(ppl: dict[str, Any], method: str) -> Table:
    """Dense against compressed perplexity per text (report.json's "perplexity")."""
    dense, compressed = ppl.get("dense", {}), ppl.get("compressed", {})
    rows = []
    for name in compressed:
        before, after = dense.get(name), compressed.get(name)
        change = f"{100 * (after / before - 1):+.1f}%" if finite(before) and finite(after) and before else MISSING
        rows.append([short_name(name), perplexity(before), perplexity(after), change])
    tokens = f", first {number(ppl['max_tokens'])} tokens" if ppl.get("max_tokens") else ""
    return Table(["text", "dense", method, "change"], rows, f"Perplexity, seqlen {ppl.get('seqlen')}{tokens}",
                 [False, True, True, True])


def _layer_table(layers: list[dict[str, Any]]) -> Table:
    rows = [[layer["name"], " × ".join(str(d) for d in layer.get("shape", [])), percent(layer.get("sparsity"), 2),
             number(layer.get("relative_error")), seconds(layer.get("seconds"))] for layer in layers]
    return Table(["layer", "shape (out × in)", "sparsity", "relative error", "time"], rows, "Every compressed layer",
                 [False, True, True, True, True])


def method_options(method: dict[str, Any]) -> str:
    """The options that say something: no None, no bits=16 (unquantized), no refinement knobs without refinement."""
    shown = []
    for key, value in method.items():
        if key == "method" or value is None or (key == "bits" and value == 16):
            continue
        if key.startswith("refine") and method.get("refine", "none") == "none":
            continue
        if key == "hessian_shrink" and not value:
            continue
        shown.append(f"{key}={plain(value)}")
    return ", ".join(shown)

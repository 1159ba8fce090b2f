"""A sweep's results on disk: results.json (everything) and results.csv (one row per setting).

Both are rewritten whole after every setting, through a temporary file and a rename, so a sweep
cut short keeps every finished row and never leaves a half-written file.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrunellmError
from ..io.atomic import write_text_atomic

KIND = "prunellm-sweep"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
PLOTS_DIR = "plots"
MODELS_DIR = "models"
DENSE = "dense"


@dataclass
class SweepResults:
    """model: where it came from and its size. spec: everything a result depends on besides the
    setting (dtype, calibration, evaluation, tasks, walk); a resumed sweep must match it. rows: one per
    finished setting, the dense model first."""

    model: dict[str, Any]
    spec: dict[str, Any]
    versions: dict[str, Any] = field(default_factory=dict)
    settings: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=lambda: _now())
    updated: str | None = None  # when a row was last saved; None until the first save

    def row(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["key"] == key), None)

    @property
    def dense(self) -> dict[str, Any] | None:
        return self.row(DENSE)

    @property
    def compressed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["key"] != DENSE]

    def add(self, row: dict[str, Any]) -> None:
        """Add or replace (same key) a row; the dense row stays first."""
        self.rows = [r for r in self.rows if r["key"] != row["key"]]
        if row["key"] == DENSE:
            self.rows.insert(0, row)
        else:
            self.rows.append(row)

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "version": 1, "created": self.created, "updated": self.updated, "model": self.model,
                "spec": self.spec, "versions": self.versions, "settings": self.settings, "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SweepResults":
        return cls(model=data["model"], spec=data["spec"], versions=data.get("versions", {}),
                   settings=data.get("settings", []), rows=data.get("rows", []), created=data.get("created", _now()),
                   updated=data.get("updated"))

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        self.updated = _now()
        write_text_atomic(out / RESULTS_JSON, json.dumps(_finite(self.to_json()), indent=2) + "\n")
        write_text_atomic(out / RESULTS_CSV, table_csv(self))


def load_results(path: str | Path) -> SweepResults:
    """The results of the sweep in directory `path` (or its results.json)."""
    path = Path(path).expanduser()
    file = path / RESULTS_JSON if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrunellmError(f"no sweep results at {file}") from None
    except json.JSONDecodeError as error:
        raise PrunellmError(f"{file} is not valid JSON ({error})") from None
    if data.get("kind") != KIND:
        raise PrunellmError(f"{file} is not a prunellm sweep's results")
    return SweepResults.from_json(data)


def table(results: SweepResults) -> tuple[list[str], list[dict[str, Any]]]:
    """Flat columns and rows: setting, achieved sparsity, mean layer error, perplexity per text
    (`ppl/<name>`), zero-shot metrics (`<task>/<metric>`), seconds."""
    datasets = _ordered(name for r in results.rows for name in r.get("perplexity", {}))
    metrics = _ordered((task, metric) for r in results.rows for task, score in r.get("zero_shot", {}).items()
                       for metric in score.get("metrics", {}))
    columns = ["key", "method", "sparsity", "nm", "bits", "group_size", "achieved_sparsity", "mean_layer_error"]
    columns += [f"ppl/{short_name(name)}" for name in datasets]
    columns += [f"{task}/{metric}" for task, metric in metrics]
    columns += ["prune_seconds", "eval_seconds"]
    flat = []
    for r in results.rows:
        values = {"key": r["key"], "method": r["method"], "sparsity": r.get("sparsity"), "nm": r.get("nm"),
                  "bits": r.get("bits"), "group_size": r.get("group_size"),
                  "achieved_sparsity": r.get("achieved_sparsity"), "mean_layer_error": mean_layer_error(r),
                  "prune_seconds": r.get("seconds", {}).get("prune"), "eval_seconds": r.get("seconds", {}).get("eval")}
        for name in datasets:
            values[f"ppl/{short_name(name)}"] = r.get("perplexity", {}).get(name)
        for task, metric in metrics:
            values[f"{task}/{metric}"] = r.get("zero_shot", {}).get(task, {}).get("metrics", {}).get(metric)
        flat.append(values)
    return columns, flat


def table_csv(results: SweepResults) -> str:
    columns, rows = table(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def describe_row(row: dict[str, Any]) -> str:
    """One console line: 'sparsegpt 50%: sparsity 50.00%, wikitext2 31.200, prunellm_basics acc 0.625
    (prune 12.3 s, eval 4.5 s)'."""
    parts = [f"sparsity {100 * row.get('achieved_sparsity', 0.0):.2f}%"]
    parts += [f"{short_name(name)} {value:.3f}" for name, value in row.get("perplexity", {}).items()
              if isinstance(value, float)]
    for task, score in row.get("zero_shot", {}).items():
        metrics = score.get("metrics", {})
        if "acc" in metrics:
            parts.append(f"{task} acc {metrics['acc']:.3f}")
    times = row.get("seconds", {})
    timing = f"prune {times.get('prune', 0):.1f} s, eval {times.get('eval', 0):.1f} s"
    return f"{row['label']}: {', '.join(parts)} ({timing})"


def mean_layer_error(row: dict[str, Any]) -> float | None:
    errors = [layer["relative_error"] for layer in row.get("layers", []) if layer.get("relative_error") is not None]
    return sum(errors) / len(errors) if errors else None


def short_name(name: str) -> str:
    """A data set's name for a column: 'wikitext2' as is, a local file by its file name."""
    return Path(name).name if ("/" in name or os.sep in name) else name


def _finite(value: Any) -> Any:
    """NaN and infinity as null: strict JSON, readable by any tool (a diverged model's perplexity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _ordered(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

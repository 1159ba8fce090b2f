"""Find what a run directory holds, draw its figures, write report.html and report.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PrunellmError
from ..io.atomic import write_text_atomic
from ..io.save import REPORT_FILE
from ..sweep.results import KIND, PLOTS_DIR, RESULTS_JSON, SweepResults
from .html import render_html
from .markdown import render_markdown
from .page import Page


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path]


def write_report(run: str | Path, out_dir: str | Path | None = None) -> ReportFiles:
    """Render `run` (a sweep directory, a prune output directory, or either's JSON file) into
    `out_dir` (default: the run's directory): report.html, report.md and plots/*.png."""
    data, source = _read_run(Path(run).expanduser())
    out = Path(out_dir).expanduser() if out_dir is not None else source.parent
    if out.exists() and not out.is_dir():
        raise PrunellmError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    page, figures = _page(data, out / PLOTS_DIR)
    html, markdown = out / "report.html", out / "report.md"
    write_text_atomic(html, render_html(page))
    write_text_atomic(markdown, render_markdown(page, out))
    return ReportFiles(html, markdown, figures)


def _page(data: dict[str, Any], plots_dir: Path) -> tuple[Page, list[Path]]:
    if data.get("kind") == KIND:
        from .plots import sweep_plots
        from .sweep_content import sweep_page

        results = SweepResults.from_json(data)
        plots = sweep_plots(results, plots_dir)
        return sweep_page(results, plots), list(plots.values())
    from .plots import run_plots
    from .run_content import run_page

    plots = run_plots(data, plots_dir)
    return run_page(data, plots), list(plots.values())


def _read_run(path: Path) -> tuple[dict[str, Any], Path]:
    """(the run's JSON, its file): results.json of a sweep, report.json of a prune (or the
    `.report.json` beside a GGUF output)."""
    if path.is_dir():
        candidates = [path / RESULTS_JSON, path / REPORT_FILE]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise PrunellmError(f"{path} holds neither {RESULTS_JSON} (a sweep) nor {REPORT_FILE} (a prune run)")
    elif path.is_file():
        file = path
    else:
        raise PrunellmError(f"no such run directory or file: {path}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PrunellmError(f"{file} is not a JSON report ({error})") from None
    if not isinstance(data, dict) or not (data.get("kind") == KIND or "method" in data and "layers" in data):
        raise PrunellmError(f"{file} is neither a prunellm sweep's results nor a prune run's report")
    return data, file

"""Reports people read: `write_report(RUN_DIR)` renders a sweep directory (results.json) or a
`prunellm prune --out` directory (report.json) as self-contained HTML and as Markdown."""

from prunellm.report.write import ReportFiles, write_report

__all__ = ["ReportFiles", "write_report"]

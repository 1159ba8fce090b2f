"""A page as Markdown (GitHub flavour): pipe tables, figures linked by relative path."""

from __future__ import annotations

import os
from pathlib import Path

from .page import Facts, Figure, Page, Table, Text


def render_markdown(page: Page, base_dir: str | Path) -> str:
    """Figures are linked relative to `base_dir`, the directory the Markdown file is written to."""
    lines = [f"# {page.title}", ""]
    if page.subtitle:
        lines += [f"_{page.subtitle}_", ""]
    for section in page.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Facts):
                lines += _table(["setting", "value"], [[k, v] for k, v in block.items], [False, False], set())
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"**{_escape(block.caption)}**", ""]
                lines += _table(block.columns, block.rows, block.numeric, block.bold)
            elif isinstance(block, Figure):
                link = Path(os.path.relpath(block.path, base_dir)).as_posix()
                lines += [f"![{block.title}]({link})", "", f"_{block.title}._ {block.caption}", ""]
            elif isinstance(block, Text):
                lines += [block.text, ""]
    return "\n".join(lines).rstrip() + "\n"


def _table(columns: list[str], rows: list[list[str]], numeric: list[bool], bold: set[tuple[int, int]]) -> list[str]:
    align = ["---:" if c < len(numeric) and numeric[c] else "---" for c in range(len(columns))]
    lines = ["| " + " | ".join(_escape(c) for c in columns) + " |", "| " + " | ".join(align) + " |"]
    for r, row in enumerate(rows):
        cells = [f"**{_escape(cell)}**" if (r, c) in bold else _escape(cell) for c, cell in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")

"""A report page as plain data: sections of facts, tables, figures and text. The HTML and the
Markdown renderers draw the same page, so the two never disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Facts:
    """Settings as (name, value) pairs."""

    items: list[tuple[str, str]]


@dataclass
class Table:
    """Cells already formatted. numeric: per column, right-aligned; bold: (row, column) cells to stress."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Figure:
    path: Path
    title: str
    caption: str = ""


@dataclass
class Text:
    text: str


Block = Facts | Table | Figure | Text


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Page:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

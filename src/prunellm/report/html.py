"""A page as one self-contained HTML file: inline CSS, figures as base64 data URIs, no script,
no external resource, so it opens the same offline, in a mail attachment or in CI artifacts."""

from __future__ import annotations

import base64
from html import escape

from .page import Facts, Figure, Page, Section, Table, Text

_CSS = """
body { font-family: -apple-system, "Segoe UI", "Liberation Sans", Arial, sans-serif; color: #1b1f24;
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1180px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
.subtitle { color: #57606a; margin: 0 0 12px; }
p.note { color: #3d444d; font-size: 0.93em; max-width: 900px; }
table { border-collapse: collapse; margin: 10px 0 22px; font-size: 0.9em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; color: #24292f; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
tbody tr:nth-child(even) td { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: 700; background: #dafbe1 !important; }
table.facts th { width: 210px; }
figure { margin: 12px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.9em; margin-top: 4px; max-width: 900px; }
footer { margin-top: 48px; color: #8c959f; font-size: 0.85em; }
"""


def render_html(page: Page) -> str:
    body = [f"<h1>{escape(page.title)}</h1>"]
    if page.subtitle:
        body.append(f'<p class="subtitle">{escape(page.subtitle)}</p>')
    body += [_section(section) for section in page.sections]
    body.append("<footer>Written by prunellm report. Self-contained: the figures are embedded in this file.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"generator\" content=\"prunellm\">\n"
            f"<title>{escape(page.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _section(section: Section) -> str:
    parts = [f"<section>\n<h2>{escape(section.title)}</h2>"]
    for block in section.blocks:
        if isinstance(block, Facts):
            rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in block.items)
            parts.append(f'<table class="facts"><tbody>{rows}</tbody></table>')
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            caption = f"<figcaption><b>{escape(block.title)}.</b> {escape(block.caption)}</figcaption>"
            image = f'<img src="data:image/png;base64,{data}" alt="{escape(block.title)}">'
            parts.append(f"<figure>{image}{caption}</figure>")
        elif isinstance(block, Text):
            parts.append(f'<p class="note">{escape(block.text)}</p>')
    return "\n".join(parts) + "\n</section>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = []
    for r, row in enumerate(table.rows):
        cells = []
        for c, cell in enumerate(row):
            classes = [name for name, on in (("num", c < len(table.numeric) and table.numeric[c]),
                                             ("best", (r, c) in table.bold)) if on]
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{escape(cell)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f'<table class="results">{caption}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'

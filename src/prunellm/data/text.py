"""Evaluation texts: one string per corpus split, joined the way the papers join it."""

from __future__ import annotations

from pathlib import Path

from prunellm.data.corpora import KNOWN_CORPORA, canonical_split, corpus_rows, read_jsonl_texts
from prunellm.errors import PrunellmError

# SparseGPT's C4 evaluation text is the first 1100 validation documents joined by spaces
# (then cut to 256 windows of seqlen tokens; see prunellm.eval).
C4_EVAL_DOCUMENTS = 1100

_JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def load_eval_text(name: str, data_dir: str | Path | None = None, split: str = "test") -> str:
    """The text to evaluate perplexity on.

    name: "wikitext2" (rows joined with "\\n\\n", exactly
    `"\\n\\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])`),
    "ptb" (sentences joined with " "), "c4" (first 1100 validation documents joined with
    " "; "test" means validation, C4 has no test split), or a path to a .txt file (used as
    is) or a JSON-lines file (the "text" fields joined with "\\n\\n"). Known names win over a
    file of the same name. Local files under `data_dir` are used first, the hub second.
    """
    key = name.lower()
    if key == "wikitext2":
        return "\n\n".join(corpus_rows(key, split, data_dir))
    if key == "ptb":
        return " ".join(corpus_rows(key, split, data_dir))
    if key == "c4":
        canonical_split(split)  # reject typos even though c4 evaluates on validation anyway
        return " ".join(corpus_rows(key, "validation", data_dir)[:C4_EVAL_DOCUMENTS])
    return read_text_file(name)


def read_text_file(path: str | Path) -> str:
    """A local .txt file as is, or a JSON-lines file's "text" fields joined with "\\n\\n"."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PrunellmError(
            f"unknown dataset {str(path)!r}: not a file, and not one of {', '.join(KNOWN_CORPORA)}"
        )
    if not path.is_file():
        raise PrunellmError(f"{path} is not a file (expected a .txt or .jsonl file)")
    if path.name.endswith(_JSONL_SUFFIXES):
        # Blank-line separated, like wikitext's paragraphs: documents stay apart for the tokenizer.
        return "\n\n".join(read_jsonl_texts(path))
    return path.read_text(encoding="utf-8")

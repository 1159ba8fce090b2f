"""The named corpora (wikitext2, ptb, c4): rows from local files first, the hub second.

Rows are returned exactly as the Hugging Face datasets the papers used serve them, so
that joining them (see `text.py`, `calibration.py`) reproduces the papers' strings.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

from prunellm.data.paths import DATA_DIR_ENV, resolve_data_dir
from prunellm.errors import PrunellmError

logger = logging.getLogger(__name__)

KNOWN_CORPORA = ("wikitext2", "ptb", "c4")

# User-facing split names -> the hub's names. "valid" is how the raw files spell it.
_SPLITS = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
_FILE_SPLIT = {"train": "train", "validation": "valid", "test": "test"}

# PTB's parquet conversion on the hub (the dataset moved under the ptb-text-only organization;
# "%2F" is the branch name's "/" as hf:// paths spell it).
_PTB_PARQUET = "hf://datasets/ptb-text-only/ptb_text_only@refs%2Fconvert%2Fparquet"

# The shards SparseGPT/Wanda/GPTQ use. C4 has no test split: "test" means validation.
_C4_SHARDS = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


def canonical_split(split: str) -> str:
    """'train' | 'validation' | 'test' for any accepted spelling, else a PrunellmError."""
    if split not in _SPLITS:
        raise PrunellmError(f"unknown split {split!r}; use one of: {', '.join(_SPLITS)}")
    return _SPLITS[split]


def corpus_rows(name: str, split: str, data_dir: str | Path | None = None) -> list[str]:
    """Rows of a known corpus: wikitext2 lines, ptb sentences or c4 documents."""
    split = canonical_split(split)
    root = resolve_data_dir(data_dir)
    if root is None:
        looked = f"nothing locally (no data_dir given and ${DATA_DIR_ENV} unset)"
    else:
        files, looked = _local_files(name, split, root)
        if files:
            logger.info("%s %s: reading %s", name, split, ", ".join(map(str, files)))
            return _read_local(name, files)
    try:
        return _hub_rows(name, split)
    except ImportError:
        reason = "the `datasets` package is not installed (pip install 'prunellm[online]')"
    except Exception as err:  # noqa: BLE001 - any hub failure becomes the one-line error below
        first_line = (str(err).splitlines() or [""])[0][:200]
        reason = f"loading it from the Hugging Face hub failed ({type(err).__name__}: {first_line})"
    raise PrunellmError(f"{name} {split} split not available: looked at {looked}; {reason}")


def _local_files(name: str, split: str, root: Path) -> tuple[list[Path], str]:
    """The local files for a corpus split, and a description of where they were looked for."""
    if name == "wikitext2":
        path = root / "wikitext-2-raw" / f"wiki.{_FILE_SPLIT[split]}.raw"
    elif name == "ptb":
        path = root / "ptb" / f"ptb.{_FILE_SPLIT[split]}.txt"
    else:
        # Any JSON-lines shard of the split, e.g. c4-validation.00000-of-00008.json(.gz).
        pattern = f"*{'train' if split == 'train' else 'validation'}*.json*"
        return sorted((root / "c4").glob(pattern)), str(root / "c4" / pattern)
    return ([path] if path.is_file() else []), str(path)


def _read_local(name: str, files: list[Path]) -> list[str]:
    if name == "wikitext2":
        return read_wikitext_rows(files[0])
    if name == "ptb":
        return read_ptb_sentences(files[0])
    return [doc for path in files for doc in read_jsonl_texts(path)]


def _hub_rows(name: str, split: str) -> list[str]:
    from datasets import load_dataset  # lazily: optional, and only useful online

    if name == "wikitext2":
        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    if name == "ptb":
        return list(load_dataset("parquet", data_files=ptb_parquet_url(split), split="train")["sentence"])
    c4_split = "train" if split == "train" else "validation"
    data = load_dataset("allenai/c4", data_files={c4_split: _C4_SHARDS[c4_split]}, split=c4_split)
    return list(data["text"])


def ptb_parquet_url(split: str) -> str:
    """The hub's parquet conversion of `ptb_text_only`'s split (train, validation or test).

    Current `datasets` refuses the dataset's loading script; the hub's automatic parquet
    conversion (branch refs/convert/parquet) holds the rows that script built. Read
    with `load_dataset("parquet", data_files=url, split="train")`: one file is one "train" split.
    """
    split = canonical_split(split)
    return f"{_PTB_PARQUET}/penn_treebank/{split}/0000.parquet"


def read_wikitext_rows(path: Path) -> list[str]:
    """Rows as the `wikitext` dataset builds them: each line with its newline, blank lines as ''.

    Iterating the file (not str.splitlines) splits on '\\n' only, as the dataset's builder
    did; splitlines would also split on rarer separators such as U+2028.
    """
    with open(path, encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def read_ptb_sentences(path: Path) -> list[str]:
    """Sentences as `ptb_text_only` serves them: each line stripped of surrounding spaces."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


def read_jsonl_texts(path: Path) -> list[str]:
    """The "text" field of every non-blank line of a JSON-lines file (optionally .gz)."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    texts = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrunellmError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise PrunellmError(f'{path}:{lineno}: expected an object with a string "text" field')
            texts.append(record["text"])
    return texts

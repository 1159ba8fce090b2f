"""What a calibration source is, and the one token stream every kind of source becomes.

A source is a name (wikitext2, ptb, c4), a local path (a text file, a .jsonl/.json/.csv/.parquet
file, a `save_to_disk` directory, a directory of data files), a Hugging Face dataset id
("owner/name", with a config, split and column), or, from Python, the data itself: a list of
strings, a list of chat conversations, a `datasets.Dataset`/`DatasetDict`, or token ids (a
LongTensor [n, seqlen] or a list of 1-D tensors). Local paths win over hub ids of the same
spelling.

Every source but c4 becomes one stream of token ids, cut into windows by `calibration.py`:
a text file as it is; wikitext2/ptb rows joined with " " (as SparseGPT does); records (a
column's strings, or its conversations rendered by the chat template) joined with "\\n\\n", the
rule local JSON-lines files always had; token ids concatenated in order (rows of a 2-D tensor
one after another).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from prunellm.data.chat import is_conversation, render_conversations
from prunellm.data.corpora import KNOWN_CORPORA, canonical_split, corpus_rows
from prunellm.data.tables import (Table, dataset_table, file_table, hub_table, is_saved_dataset, is_table_file,
                                  saved_dataset_table)
from prunellm.data.tokenize import encode
from prunellm.errors import PrunellmError

# str | os.PathLike | list[str] | list[conversation] | datasets.Dataset | DatasetDict
# | LongTensor [n, seqlen] | list[LongTensor]
CalibrationSource = Any

# "owner/name" as the hub spells dataset repositories. Bare names are not taken as ids: a typo of
# a corpus name ("wikitext9") should be refused at once, not after the hub's retries.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Which of config_name, split, column each kind of source takes.
_TAKES = {"corpus": {"split"}, "text_file": set(), "table_file": {"column"}, "saved_dataset": {"split", "column"},
          "data_dir": {"config_name", "split", "column"}, "hub": {"config_name", "split", "column"},
          "records": set(), "dataset": {"split", "column"}, "tokens": set()}


def source_kind(source: CalibrationSource) -> str:
    """One of _TAKES's keys; a PrunellmError for a string that names nothing."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.lower() in KNOWN_CORPORA:
            return "corpus"
        path = Path(text).expanduser()
        if path.is_file():
            return "table_file" if is_table_file(path) else "text_file"
        if path.is_dir():
            return "saved_dataset" if is_saved_dataset(path) else "data_dir"
        if _HUB_ID.fullmatch(text) and not is_table_file(text) and not text.lower().endswith(".txt"):
            return "hub"
        raise PrunellmError(f"unknown dataset {text!r}: not a file or directory, not one of "
                            f"{', '.join(KNOWN_CORPORA)}, and not a Hugging Face dataset id (owner/name)")
    if isinstance(source, torch.Tensor):
        return "tokens"
    datasets = sys.modules.get("datasets")  # a Dataset's owner has imported `datasets` already
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset,
                                                    datasets.IterableDatasetDict)):
        return "dataset"
    if isinstance(source, (list, tuple)):
        if not source:
            raise PrunellmError("the calibration data given is empty")
        return "tokens" if isinstance(source[0], torch.Tensor) else "records"
    raise PrunellmError(f"calibration source of type {type(source).__name__}: give a corpus name, a path or "
                        "dataset id, a list of strings or chat conversations, a datasets.Dataset, or token ids")


def check_source_options(source: CalibrationSource, config_name: str | None = None, split: str | None = None,
                         column: str | None = None) -> str:
    """The source's kind, after refusing options it does not take (a text file has no column...)."""
    kind = source_kind(source)
    given = {name for name, value in (("config_name", config_name), ("split", split), ("column", column))
             if value is not None}
    extra = sorted(given - _TAKES[kind])
    if extra:
        takes = ", ".join(sorted(_TAKES[kind])) or "none of them"
        raise PrunellmError(f"calibration source {source_label(source)}: {' and '.join(extra)} do not apply "
                            f"to it (it takes {takes})")
    if kind == "corpus" and split is not None:
        canonical_split(split)
    return kind


def calibration_token_ids(source: CalibrationSource, tokenizer: Any, *, config_name: str | None = None,
                          split: str | None = None, column: str | None = None,
                          data_dir: str | Path | None = None) -> torch.Tensor:
    """The token stream windows are cut from (see the module docstring): a 1-D LongTensor."""
    kind = check_source_options(source, config_name, split, column)
    if kind == "tokens":
        return _token_stream(source, tokenizer)
    if kind == "corpus":
        return encode(" ".join(corpus_rows(os.fspath(source).lower(), split or "train", data_dir)), tokenizer)
    if kind == "text_file":
        return encode(_read_text(Path(os.fspath(source)).expanduser()), tokenizer)
    if kind == "records":
        texts = _texts(list(source), tokenizer, source_label(source))
    else:
        texts = table_texts(_table(source, kind, config_name, split), column, tokenizer)
    return encode("\n\n".join(texts), tokenizer)  # (N,)


def _table(source: CalibrationSource, kind: str, config_name: str | None, split: str | None) -> Table:
    if kind == "dataset":
        return dataset_table(source, source_label(source), split)
    path = Path(os.fspath(source)).expanduser()
    if kind == "table_file":
        return file_table(path)
    if kind == "saved_dataset":
        return saved_dataset_table(path, split)
    return hub_table(os.fspath(source) if kind == "hub" else str(path), config_name, split)


def table_texts(table: Table, column: str | None, tokenizer: Any) -> list[str]:
    """The texts of one column: given, else "text" when there is one, else "messages"."""
    if table.rows == 0:
        raise PrunellmError(f"calibration source {table.label} is empty (0 rows)")
    if column is None:
        column = next((name for name in ("text", "messages") if name in table.columns), None)
        if column is None:
            raise PrunellmError(f'{table.label} has no "text" or "messages" column: name the one to use '
                                f"(--calib-column); its columns: {', '.join(table.columns) or 'none'}")
    elif column not in table.columns:
        raise PrunellmError(f"column {column!r} not found in {table.label}; its columns: "
                            f"{', '.join(table.columns) or 'none'}")
    return _texts(table.read(column), tokenizer, f"{table.label}, column {column!r}")


def _texts(values: list[Any], tokenizer: Any, label: str) -> list[str]:
    """Strings as they are; chat conversations through the tokenizer's chat template."""
    if values and is_conversation(values[0]):
        return render_conversations(values, tokenizer, label)
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise PrunellmError(f"{label}: row {row} is {type(value).__name__}, expected text or a list of "
                                "{role, content} messages")
    return values


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PrunellmError(f"{path}: not UTF-8 text, and not a known data file (.txt, .jsonl, .json, .csv, "
                            ".parquet, or a dataset directory)") from None


def _token_stream(source: Any, tokenizer: Any) -> torch.Tensor:
    parts = [source] if isinstance(source, torch.Tensor) else list(source)
    for index, part in enumerate(parts):
        if not isinstance(part, torch.Tensor) or part.dtype.is_floating_point or part.dtype.is_complex \
                or part.dtype == torch.bool or part.dim() > 2:
            what = (f"{part.dtype} tensor of {part.dim()} dims" if isinstance(part, torch.Tensor)
                    else type(part).__name__)
            raise PrunellmError(f"token ids must be integer tensors of 1 or 2 dims; item {index} is a {what}")
    ids = torch.cat([part.reshape(-1).to(torch.long) for part in parts])  # (N,), rows in order
    vocab = len(tokenizer) if tokenizer is not None else None
    if ids.numel() and (int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab)):
        raise PrunellmError(f"token ids outside the tokenizer's vocabulary [0, {vocab}): "
                            f"min {int(ids.min())}, max {int(ids.max())}")
    return ids


def source_label(source: CalibrationSource) -> str:
    """How messages name a source: its string, or what kind of data was given."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, torch.Tensor):
        return f"the token ids given ({tuple(source.shape)})"
    if isinstance(source, (list, tuple)):
        return f"the {len(source)} {'tensors' if source and isinstance(source[0], torch.Tensor) else 'records'} given"
    return f"the {type(source).__name__} given"


def describe_source(source: CalibrationSource) -> str | dict[str, Any]:
    """The source as plain JSON for report.json and resume checks: a name or path as it is; data
    given in memory as its size and a hash of its content, so that two runs compare."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, torch.Tensor) or (isinstance(source, (list, tuple)) and source
                                            and isinstance(source[0], torch.Tensor)):
        ids = _token_stream(source, None)
        return {"type": "tokens", "tokens": ids.numel(), "sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest()}
    if isinstance(source, (list, tuple)):
        text = json.dumps(list(source), ensure_ascii=False, sort_keys=True, default=str)
        return {"type": "records", "rows": len(source), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if hasattr(source, "column_names") and hasattr(source, "__len__"):  # a datasets.Dataset or DatasetDict
        fingerprint = getattr(source, "_fingerprint", None)  # datasets' own content hash
        if fingerprint is None and isinstance(source, dict):
            fingerprint = {name: getattr(part, "_fingerprint", None) for name, part in source.items()}
        return {"type": type(source).__name__, "rows": source.num_rows, "fingerprint": fingerprint}
    return {"type": type(source).__name__}

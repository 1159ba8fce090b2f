"""Tabular calibration sources: one column's values, in row order, from a JSON-lines, JSON, CSV or
parquet file, a directory written by `save_to_disk`, a `datasets.Dataset` or a hub dataset.

Local files are read without `datasets` (JSON and CSV by the standard library, parquet by
pyarrow), so they work without the online extra; dataset directories and hub ids need it.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunellm.errors import PrunellmError

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TABLE_SUFFIXES = (*JSON_SUFFIXES, ".csv", ".parquet")
_ONLINE_EXTRA = "pip install 'prunellm[online]'"


@dataclass(frozen=True)
class Table:
    """label: how messages name the source. read(column): that column's values, in row order."""

    label: str
    columns: tuple[str, ...]
    rows: int
    read: Callable[[str], list[Any]]


def is_table_file(path: str | Path) -> bool:
    return str(path).lower().endswith(TABLE_SUFFIXES)


def is_saved_dataset(path: Path) -> bool:
    """A directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def file_table(path: Path) -> Table:
    """A .jsonl/.json(.gz), .csv or .parquet file as a table."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _parquet_table(path)
    if name.endswith(".csv"):
        return _csv_table(path)
    return _json_table(path)


def _json_table(path: Path) -> Table:
    """JSON lines (one object per non-blank line), or a .json file holding one array of objects."""
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as err:
            raise PrunellmError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        where = "record"
    else:
        records = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise PrunellmError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        where = "line"
    columns: dict[str, None] = {}  # every key seen, in first-seen order
    for number, record in records:
        if not isinstance(record, dict):
            raise PrunellmError(f"{path}: {where} {number}: expected a JSON object, got {type(record).__name__}")
        columns.update(dict.fromkeys(record))

    def read(column: str) -> list[Any]:
        values = []
        for number, record in records:
            if column not in record:
                raise PrunellmError(f'{path}: {where} {number} has no "{column}" field')
            values.append(record[column])
        return values

    return Table(str(path), tuple(columns), len(records), read)


def _csv_table(path: Path) -> Table:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = tuple(reader.fieldnames or ())
    return Table(str(path), columns, len(rows), lambda column: [row[column] for row in rows])


def _parquet_table(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrunellmError(f"reading {path} needs pyarrow ({_ONLINE_EXTRA})") from None
    try:
        metadata = pq.read_metadata(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors for a broken file become one line
        raise PrunellmError(f"{path}: not a readable parquet file ({_first_line(err)})") from None
    return Table(str(path), tuple(metadata.schema.names), metadata.num_rows,
                 lambda column: pq.read_table(path, columns=[column]).column(column).to_pylist())


def dataset_table(dataset: Any, label: str, split: str | None = None) -> Table:
    """A `datasets.Dataset`, or one split of a `DatasetDict` ("train" unless it has one split only)."""
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise PrunellmError(f"{label}: a streamed (iterable) dataset cannot be sampled; take rows first, "
                            "e.g. Dataset.from_list(list(dataset.take(1000)))")
    if datasets is not None and isinstance(dataset, datasets.DatasetDict):
        dataset = _pick_split(dataset, label, split)
    elif split is not None:
        raise PrunellmError(f"{label} is a single dataset without splits: drop the split ({split!r})")
    return Table(label, tuple(dataset.column_names), len(dataset), lambda column: list(dataset[column]))


def _pick_split(splits: Any, label: str, split: str | None) -> Any:
    names = list(splits)
    if split is None and "train" not in names and len(names) == 1:
        return splits[names[0]]
    wanted = split or "train"
    if wanted not in names:
        raise PrunellmError(f"split {wanted!r} not found in {label}; its splits: {', '.join(names) or 'none'}")
    return splits[wanted]


def saved_dataset_table(path: Path, split: str | None) -> Table:
    """A directory written by Dataset.save_to_disk / DatasetDict.save_to_disk."""
    load_from_disk = _datasets_function("load_from_disk", f"reading the dataset directory {path}")
    try:
        dataset = load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - a broken directory becomes one line
        raise PrunellmError(f"{path}: not a readable saved dataset ({_first_line(err)})") from None
    return dataset_table(dataset, str(path), split)


def hub_table(source: str, config_name: str | None, split: str | None) -> Table:
    """A Hugging Face dataset id (or a local directory of data files) through `datasets.load_dataset`.

    The split may be sliced as `datasets` allows ("train[:2000]"): the whole split is read and
    tokenized, so a slice keeps a large dataset quick."""
    load_dataset = _datasets_function("load_dataset", f"loading the dataset {source!r}")
    split = split or "train"
    label = f"{source}" + (f" (config {config_name})" if config_name else "") + f" [{split}]"
    try:
        dataset = load_dataset(source, config_name, split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure (missing id, config or split) becomes one line
        raise PrunellmError(f"calibration dataset {label} could not be loaded: "
                            f"{type(err).__name__}: {_first_line(err)}") from None
    return dataset_table(dataset, label)


def _datasets_function(name: str, purpose: str) -> Callable[..., Any]:
    try:
        import datasets
    except ImportError:
        raise PrunellmError(f"{purpose} needs the `datasets` package ({_ONLINE_EXTRA})") from None
    return getattr(datasets, name)


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:300]

"""Writes that land whole or not at all: a temporary sibling, flushed to disk, then one rename.

Every such write in prunellm goes through `atomic_path`:

    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, tmp)

Whatever instant the process dies at (SIGKILL, power cut), `out / "model.safetensors"` is
either the old file (or absent) or the complete new one, never a prefix of it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TMP = "tmp"


def sibling_name(target: Path, tag: str) -> Path:
    """An unused hidden name beside `target`, e.g. `.out.tmp-1a2b3c4d`.

    Same parent, hence same filesystem, so the final rename is atomic.
    """
    while True:
        candidate = target.parent / f".{target.name}.{tag}-{secrets.token_hex(4)}"
        if not os.path.lexists(candidate):
            return candidate


def make_sibling_dir(target: Path, tag: str) -> Path:
    """Create and return an empty hidden directory beside `target`."""
    while True:
        candidate = sibling_name(target, tag)
        try:
            # Not tempfile.mkdtemp: its 0700 mode would survive the rename into place.
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for the body to write (a file, or a directory it creates);
    then its contents are fsynced, it is renamed to `path` and the rename is fsynced. On error
    the temporary is removed and `path` left as it was. A directory replaces only an absent or
    empty one (as os.replace does)."""
    path = Path(path)
    tmp = sibling_name(path, _TMP)
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync(path.parent)  # the rename itself survives a power cut


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write `data` as indented JSON to `path` through `atomic_path`."""
    # Serialize first: an unserializable value then leaves no file behind at all.
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def remove_leftovers(directory: Path) -> None:
    """Remove the temporaries that writes cut short (SIGKILL: no cleanup runs) left in `directory`."""
    for leftover in directory.glob(f".*.{_TMP}-*"):
        _remove(leftover)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    """Report values that json cannot write itself: paths, numpy/torch scalars, dtypes."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar, 0-d tensor
        return value.item()
    module = type(value).__module__
    if module == "torch" and type(value).__name__ in ("dtype", "device"):
        return str(value)
    raise TypeError(f"report value of type {type(value).__name__} is not JSON serializable")

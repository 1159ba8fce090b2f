"""Writes that land whole or not at all: a temporary sibling, then one rename."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


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


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write `data` as indented JSON to `path` through a temporary file and os.replace."""
    path = Path(path)
    # Serialize first: an unserializable value then leaves no file behind at all.
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    tmp = sibling_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

"""Where local data lives: one directory holding the files named in `corpora`."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "PRUNELLM_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data directory: `data_dir` if given, else $PRUNELLM_DATA_DIR, else None.

    Existence is not checked here: a missing directory just means no local file is
    found, and the caller's error then names the paths it looked at.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None

"""Decide what a user's model argument names: a GGUF file, a local directory, or a hub id."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prunellm.errors import PrunellmError

SourceKind = Literal["gguf", "dir", "hub"]


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str | Path  # a Path for "gguf" and "dir", the id string for "hub"


def looks_like_path(source: str) -> bool:
    """Whether a string that names nothing on disk was meant as a path rather than a hub id.

    Hub ids are `name` or `org/name`, so on POSIX a single "/" alone does not make a path;
    a leading "/", ".", "~", a ".gguf" suffix, a second separator or a Windows separator do.
    """
    separators = [s for s in (os.sep, os.altsep) if s]
    if source.startswith((".", "~", *separators)) or source.endswith(".gguf"):
        return True
    if "\\" in separators and "\\" in source:
        return True
    return source.count("/") > 1


def resolve_source(source: str | Path) -> ModelSource:
    """Classify `source`; raise PrunellmError for a path that does not exist or is not loadable."""
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource("dir", path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise PrunellmError(f"model file must be a .gguf file (or pass a model directory): {source}")
        return ModelSource("gguf", path)
    if isinstance(source, Path) or looks_like_path(str(source)):
        raise PrunellmError(f"model path not found: {source}")
    return ModelSource("hub", str(source))

"""Read a Hugging Face directory's safetensors tensor by tensor, never the whole model.

safetensors files are memory-mapped: reading one tensor touches only its own bytes. Files are
opened per read and closed after, so that the pages of tensors already read do not stay
mapped (and counted in the process's resident memory) for the rest of a long run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from prunellm.errors import PrunellmError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    file: str  # name inside the directory
    dtype: str  # safetensors' name, e.g. "F16"
    shape: tuple[int, ...]


class LazyCheckpoint:
    """The tensors of a safetensors checkpoint directory, by name, read on demand."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise PrunellmError(f"streaming needs a local model directory, got {directory}")
        self.tensors = self._scan()

    def _scan(self) -> dict[str, TensorInfo]:
        from safetensors import safe_open

        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as error:
                raise PrunellmError(f"cannot read {index}: {error}") from None
            files = sorted(set(weight_map.values()))
        elif (self.directory / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise PrunellmError(f"streaming needs safetensors weights: {self.directory} has no {SINGLE_FILE} "
                                f"or {INDEX_FILE}")
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            try:
                with safe_open(str(self.directory / name), framework="pt") as handle:
                    for key in handle.keys():
                        view = handle.get_slice(key)
                        tensors[key] = TensorInfo(name, view.get_dtype(), tuple(view.get_shape()))
            except (OSError, ValueError, RuntimeError) as error:  # missing or corrupt shard
                raise PrunellmError(f"cannot read {self.directory / name}: {str(error).splitlines()[0]}") from None
        return tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, as stored (CPU, the file's dtype); each file opened once."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.tensors[name].file, []).append(name)
        out: dict[str, torch.Tensor] = {}
        for file, keys in by_file.items():
            with safe_open(str(self.directory / file), framework="pt", device="cpu") as handle:
                for key in keys:
                    out[key] = handle.get_tensor(key)
        return out

    def fingerprint(self) -> dict[str, list[int]]:
        """Size and modification time of every weight file: a resumed run must read the same ones."""
        files = sorted({info.file for info in self.tensors.values()})
        stats = {name: os.stat(self.directory / name) for name in files}
        return {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}

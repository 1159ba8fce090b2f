"""Let go of a memory-mapped file's pages once the tensors on them have been read for the last time.

safetensors maps a checkpoint's file, and the tensors it returns read straight from the mapping:
every page read stays resident, counted in the process's memory, until the last tensor of the
file is gone. A load that copies or repacks each tensor once (`prunellm.load` on a CPU) would
hold the whole file beside its own copies by the end, about twice the model at its peak.
`MappedFile.drop` hands back the pages under tensors that nothing reads again (madvise
MADV_DONTNEED): only pages wholly inside such a tensor, so no other tensor's bytes are touched,
and only inside the file's own mapping, never anonymous memory, where the call would zero live
data. Linux only; elsewhere, or for a file that is not mapped, nothing is dropped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch

MADV_DONTNEED = 4  # Linux's value on every architecture torch runs on


@cache
def _madvise():  # the C function, or None where there is none
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        advise = libc.madvise
    except (OSError, AttributeError):
        return None
    advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advise.restype = ctypes.c_int
    return advise


def mapped_ranges(path: str | Path) -> list[tuple[int, int]]:
    """The address ranges (start, end) at which this process maps `path` (/proc/self/maps)."""
    target = str(Path(path).resolve())
    ranges = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


class MappedFile:
    """A file as this process maps it now: `drop` hands back the pages under dead tensors."""

    def __init__(self, path: str | Path) -> None:
        self.ranges = mapped_ranges(path) if _madvise() is not None else []

    def drop(self, tensors: Iterable[torch.Tensor]) -> int:
        """Hand back the whole pages under `tensors`, which must not be read again; returns the
        bytes handed back."""
        if not self.ranges:
            return 0
        advise, page, dropped = _madvise(), mmap.PAGESIZE, 0
        for tensor in tensors:
            start = tensor.data_ptr()
            end = start + tensor.numel() * tensor.element_size()
            if not any(low <= start and end <= high for low, high in self.ranges):
                continue  # not on the file's mapping (a copy, or another file)
            first, last = -(-start // page) * page, end // page * page  # inward: whole pages only
            if last > first and advise(first, last - first, MADV_DONTNEED) == 0:
                dropped += last - first
        return dropped

"""Hand freed heap memory back to the operating system between streamed blocks.

glibc's malloc keeps memory that Python and torch free in its arenas for reuse, and a
streamed prune frees and reallocates a block's worth of differently sized tensors at every
block: the arenas fragment and the process's resident memory creeps up by roughly a block per
block (bench/README.md, "Streaming: peak memory"), although no tensor
outlives its block. `malloc_trim` returns the free pages; with it, resident memory stays flat
from block to block. Elsewhere (macOS, musl) this is a no-op: their allocators differ.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


@cache
def _malloc_trim():  # the C function, or None where there is no glibc
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Collect unreachable Python objects and return free heap pages to the system; True when
    the allocator could be asked to trim."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@contextmanager
def young_objects_only() -> Iterator[None]:
    """Within it, a collection walks only the objects made since it was entered.

    A full collection walks every object the process tracks: with transformers imported that is
    about a million, 0.2 s a call on the machines here, and a load or a streamed prune collects
    every few layers or every block. What existed on entry (modules, classes, the caller's
    objects) is frozen (gc.freeze) and handed back to the collector on the way out
    (gc.unfreeze): garbage among it waits until then, nothing is lost. Inside an outer freeze
    (this context nested, or the caller's own) it changes nothing.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

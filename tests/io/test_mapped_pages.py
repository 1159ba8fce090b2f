"""io/mapped_pages.py: a memory-mapped checkpoint's pages handed back under tensors read for the
last time, and nothing else."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunellm.io.mapped_pages import MappedFile, mapped_ranges

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps: Linux")


def _resident_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_pages_under_a_read_tensor_are_handed_back_and_read_again_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    big = torch.arange(8 * 2**20, dtype=torch.float32)  # 32 MiB
    small = torch.tensor([1.5, 2.5, 3.5])
    save_file({"big": big, "small": small}, str(path))
    tensors = load_file(str(path))
    assert mapped_ranges(path), "safetensors maps the file"
    total = float(tensors["big"].sum())  # every page of it read: resident
    before = _resident_kib()
    dropped = MappedFile(path).drop([tensors["big"]])
    assert dropped >= 32 * 2**20 - 2 * mmap.PAGESIZE  # all but the pages it shares at its ends
    assert _resident_kib() < before - 16 * 1024  # the process holds them no more
    assert float(tensors["big"].sum()) == total  # a page read again comes back from the file
    assert torch.equal(tensors["small"], small)


def test_memory_not_on_the_file_is_never_touched(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.ones(2**20)}, str(path))
    mapped = load_file(str(path))
    copy = mapped["x"].clone()  # anonymous memory, where madvise would zero it
    own = torch.randn(2**20)
    kept = own.clone()
    file = MappedFile(path)
    assert file.drop([copy, own]) == 0
    assert torch.equal(own, kept) and bool((copy == 1).all())
    assert MappedFile(tmp_path / "not-mapped.safetensors").drop([mapped["x"]]) == 0

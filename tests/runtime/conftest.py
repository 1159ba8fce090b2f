"""Fixtures the native runtime's tests share: each kernel level this CPU runs, thread teams."""

from __future__ import annotations

import pytest
import torch

from prunellm.runtime import cpu_kernels


@pytest.fixture(params=cpu_kernels.supported_levels() if cpu_kernels.available() else ["portable"])
def level(request, monkeypatch) -> str:
    monkeypatch.setenv(cpu_kernels.ENV, request.param)
    assert cpu_kernels.isa() == request.param
    return request.param


@pytest.fixture(params=["1 thread", "2 threads on torch's OpenMP", "2 threads on the library's pool"])
def threads(request):
    """Thread counts and teams, with every layer split over the threads (the library keeps small
    layers on one thread otherwise, and these layers are small)."""
    before = torch.get_num_threads()
    count = int(request.param[0])
    torch.set_num_threads(count)
    if cpu_kernels.available():
        threshold = cpu_kernels.set_min_part_weights(0)
        on_torch = cpu_kernels.use_torch_threads("torch" in request.param)
        if "torch" in request.param and not on_torch:
            pytest.skip("torch does not run on OpenMP here")
    yield count
    torch.set_num_threads(before)
    if cpu_kernels.available():
        cpu_kernels.set_min_part_weights(threshold)
        cpu_kernels.use_torch_threads(True)

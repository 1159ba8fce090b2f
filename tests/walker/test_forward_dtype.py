"""The calibration forwards' dtype: "auto" follows the CPU's bf16 instructions, a name pins it."""

import pytest
import torch

from prunellm import devices
from prunellm.errors import PrunellmError
from prunellm.methods import build_method
from prunellm.walker import WalkConfig, compress_model
from prunellm.walker import forward_dtype as forward
from prunellm.walker.forward_dtype import resolve_forward_dtype
from tests.tiny_models import tiny_model, tokens

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Make the walker believe the CPU does (True) or does not (False) multiply bfloat16."""
    def set_to(value: bool) -> None:
        monkeypatch.setattr(forward, "cpu_multiplies_bf16", lambda: value)
    return set_to


def test_auto_is_bfloat16_only_on_a_cpu_that_multiplies_it(bf16_cpu) -> None:
    bf16_cpu(True)
    assert resolve_forward_dtype("auto", CPU, torch.float32) == "bfloat16"
    assert resolve_forward_dtype("auto", CPU, None) == "bfloat16"  # known before the model loads
    assert resolve_forward_dtype("float32", CPU, torch.float32) == "float32"  # the way to turn it off
    # CUDA keeps the model's own dtype, as before "auto"; unknown until the model is loaded
    assert resolve_forward_dtype("auto", CUDA, torch.float16) == "float16"
    assert resolve_forward_dtype("auto", CUDA, None) == "auto"
    bf16_cpu(False)
    assert resolve_forward_dtype("auto", CPU, torch.float32) == "float32"
    assert resolve_forward_dtype(None, CPU, torch.bfloat16) == "bfloat16"  # older recipes: the model's dtype
    assert resolve_forward_dtype("bfloat16", CPU, torch.float32) == "bfloat16"


def test_an_auto_walk_runs_what_it_resolved_to_and_says_so(bf16_cpu) -> None:
    ids = tokens()
    runs = {}
    for native in (True, False):
        bf16_cpu(native)
        model = tiny_model("llama")
        result = compress_model(model, build_method("sparsegpt"), ids, WalkConfig(device="cpu", progress=False))
        runs[native] = (result.forward_dtype, [p.detach().clone() for p in model.parameters()])
    for name in ("bfloat16", "float32"):
        model = tiny_model("llama")
        result = compress_model(model, build_method("sparsegpt"), ids,
                                WalkConfig(device="cpu", forward_dtype=name, progress=False))
        assert result.forward_dtype == name
        runs[name] = [p.detach().clone() for p in model.parameters()]
    assert runs[True][0] == "bfloat16" and runs[False][0] == "float32"
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs["bfloat16"]))
    assert all(torch.equal(a, b) for a, b in zip(runs[False][1], runs["float32"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["bfloat16"], runs["float32"]))


def test_float32_forwards_of_a_bfloat16_model_are_refused_in_one_line() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    with pytest.raises(PrunellmError, match="float32 needs a float32 model"):
        compress_model(model, build_method("sparsegpt"), tokens(),
                       WalkConfig(device="cpu", forward_dtype="float32", progress=False))


def test_the_cpu_check_asks_torch_then_reads_cpuinfo(monkeypatch, tmp_path) -> None:
    devices.cpu_multiplies_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True},
                        raising=False)
    assert devices.cpu_multiplies_bf16()
    devices.cpu_multiplies_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx2": True}, raising=False)
    assert not devices.cpu_multiplies_bf16()
    # an older torch without get_capabilities: the kernel's flags (x86) or Features (ARM)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
    for text, expected in [("flags\t\t: fpu sse avx512f avx512_bf16\n", True), ("flags\t\t: fpu sse avx2\n", False),
                           ("Features\t: fp asimd sve bf16 i8mm\n", True), ("Features\t: fp asimd\n", False)]:
        cpuinfo.write_text(text)
        devices.cpu_multiplies_bf16.cache_clear()
        assert devices.cpu_multiplies_bf16() is expected, text
    cpuinfo.unlink()
    devices.cpu_multiplies_bf16.cache_clear()
    assert devices.cpu_multiplies_bf16() is False  # no /proc/cpuinfo: no claim
    devices.cpu_multiplies_bf16.cache_clear()  # the next caller asks the real CPU again

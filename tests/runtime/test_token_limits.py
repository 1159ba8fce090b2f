"""Tokens per call up to which CPU layers run on the native kernels (runtime/token_limits.py):
each layer family has a limit per activation dtype, the layers follow them (the kernel up to the
limit, torch's product bit for bit above it), and the bfloat16 dot's limits apply only on its level."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunellm.formats.compressed.layer import compress_weight
from prunellm.devices import cpu_has
from prunellm.runtime import cpu_kernels, token_limits
from prunellm.runtime.dense_decode import DecodeLinear
from prunellm.runtime.linear import CompressedLinear
from prunellm.solvers.quant import QuantGrid

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason="native CPU kernels not built")


def test_every_family_has_a_limit_for_both_activation_dtypes() -> None:
    assert [token_limits.family(bits) for bits in (None, 0, 2, 4, 8)] == ["dense", "values", "4-bit", "4-bit",
                                                                        "8-bit"]
    tables = (token_limits.FLOAT32_PATH, token_limits.AVX512_PATH, token_limits.BF16_DOT_PATH,
              token_limits.AMX_BF16_DOT_PATH, token_limits.AMX_TILE_PATH, token_limits.AVX2_BF16_PATH)
    for table in tables:
        assert set(table) == {"dense", "values", "4-bit", "8-bit"}
        assert all(1 <= limit <= token_limits.MOST_TOKENS for limit in table.values())
    for bits in (None, 0, 4, 8):
        key = token_limits.family(bits)
        float32_path, avx512, bf16_dot, amx_dot, amx_tiles, avx2_bf16 = (table[key] for table in tables)
        for amx, dot in ((False, bf16_dot), (True, amx_dot)):  # bfloat16 products on AMX tiles or not
            assert token_limits.limits(bits, "avx512bf16", amx) == {torch.float32: avx512, torch.bfloat16: dot}
            assert token_limits.limits(bits, "avx512", amx) == {torch.float32: avx512, torch.bfloat16: avx512}
            # the amx level exists only on a CPU with the tiles: its own table, whatever torch does
            assert token_limits.limits(bits, "amx", amx) == {torch.float32: avx512, torch.bfloat16: amx_tiles}
            assert token_limits.limits(bits, "avx2", amx) == {torch.float32: float32_path, torch.bfloat16: avx2_bf16}
            assert token_limits.limits(bits, "portable", amx) == {torch.float32: float32_path,
                                                                  torch.bfloat16: float32_path}
    assert token_limits.limits(4, "avx512bf16") == token_limits.limits(4, "avx512bf16", cpu_has("amx_bf16"))


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Token counts of the calls that reached the native kernel."""
    calls: list[int] = []
    matmul = cpu_kernels.matmul
    monkeypatch.setattr(cpu_kernels, "matmul", lambda x, w: calls.append(x.shape[0]) or matmul(x, w))
    return calls


@needs_kernels
@pytest.mark.parametrize("bits", [None, 4, 8])
def test_a_compressed_layer_takes_the_kernel_up_to_its_limit(monkeypatch, counted, bits) -> None:
    torch.manual_seed(0)
    weight = torch.randn(48, 128)
    weight[torch.rand(48, 128) < 0.6] = 0
    grid = None
    if bits is not None:
        scale = torch.rand(48, 2) * 0.01 + 1e-3
        grid = QuantGrid(bits, False, 64, scale, torch.full((48, 2), float(2 ** (bits - 1))))
        scale, zero = grid.expand(128)
        weight = scale * (grid.codes(weight).float() - zero)  # on the grid: the pruned weights' codes are zero's
    layer = CompressedLinear(compress_weight(weight.to(torch.bfloat16), grid))
    for table in (token_limits.FLOAT32_PATH, token_limits.AVX512_PATH, token_limits.BF16_DOT_PATH,
                  token_limits.AMX_BF16_DOT_PATH, token_limits.AMX_TILE_PATH, token_limits.AVX2_BF16_PATH):
        monkeypatch.setitem(table, token_limits.family(bits or 0), 3)
    assert layer.prepare_cpu()
    assert layer.cpu_kernel_max_tokens(torch.bfloat16) == layer.cpu_kernel_max_tokens(torch.float16) == 3
    dense = layer.dense_weight()
    for dtype in (torch.bfloat16, torch.float32):
        counted.clear()
        x = torch.randn(3, 128).to(dtype)
        torch.testing.assert_close(layer(x).float(), F.linear(x.float(), dense.float()), rtol=1e-2, atol=2e-2)
        assert counted == [3]
        x = torch.randn(4, 128).to(dtype)  # above the limit: expanded, torch's product exactly
        assert torch.equal(layer(x), F.linear(x, dense.to(dtype))) and counted == [3]


@needs_kernels
def test_a_dense_layer_takes_the_kernel_up_to_its_limit(monkeypatch, counted) -> None:
    linear = nn.Linear(128, 40, bias=True).to(torch.bfloat16)
    for table in (token_limits.FLOAT32_PATH, token_limits.AVX512_PATH, token_limits.BF16_DOT_PATH,
                  token_limits.AMX_BF16_DOT_PATH, token_limits.AMX_TILE_PATH, token_limits.AVX2_BF16_PATH):
        monkeypatch.setitem(table, "dense", 2)
    layer = DecodeLinear(linear, cpu_kernels.prepare_dense(linear.weight.detach()))
    with torch.no_grad():
        x = torch.randn(2, 128).to(torch.bfloat16)
        torch.testing.assert_close(layer(x).float(), F.linear(x, linear.weight, linear.bias).float(),
                                   rtol=2e-2, atol=2e-2)
        assert counted == [2]
        x = torch.randn(3, 128).to(torch.bfloat16)
        assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias)) and counted == [2]

import pytest
import torch

from prunellm.solvers import GPTQConfig, fit_minmax, gptq, layer_error, quantize
from tests.conftest import layer_problem


def rtn(W, bits, group_size=None, sym=False):
    """Round-to-nearest on the same min-max grid: the baseline GPTQ must beat."""
    rows, cols = W.shape
    g = group_size or cols
    groups = W.reshape(rows * cols // g, g)
    scale, zero = fit_minmax(groups, bits, sym)
    return quantize(groups, scale[:, None], zero[:, None], bits).reshape(rows, cols)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_grid(bits, group_size, act_order):
    W, H = layer_problem(rows=32, cols=128, seed=bits)
    result = gptq(W, H, GPTQConfig(bits=bits, group_size=group_size, act_order=act_order))
    assert layer_error(W, result.weight, H) < layer_error(W, rtn(W, bits, group_size), H)
    scale, zero = result.grid.expand(128)
    codes = torch.round(result.weight / scale) + zero
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    torch.testing.assert_close(scale * (codes - zero), result.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.grid.codes(result.weight).float(), codes, rtol=0, atol=0)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_keeps_pruned_zeros(act_order):
    W, H = layer_problem(rows=32, cols=128)
    W = W.masked_fill(torch.rand(32, 128, generator=torch.Generator().manual_seed(1)) < 0.5, 0.0)
    result = gptq(W, H, GPTQConfig(bits=4, group_size=64, act_order=act_order))
    assert torch.all(result.weight[W == 0] == 0)
    assert torch.equal(result.mask, W == 0)


def test_symmetric_grid_is_centred():
    W, H = layer_problem(rows=8, cols=64)
    result = gptq(W, H, GPTQConfig(bits=4, sym=True))
    assert torch.all(result.grid.zero == 8)


def test_gptq_refuses_no_quantization():
    with pytest.raises(ValueError):
        GPTQConfig(bits=16)

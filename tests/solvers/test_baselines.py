import pytest
import torch

from prunellm.solvers import MagnitudeConfig, WandaConfig, magnitude, wanda
from tests.conftest import layer_problem


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_wanda_exact_per_row_sparsity(sparsity):
    W, H = layer_problem(rows=16, cols=96)
    result = wanda(W, H, WandaConfig(sparsity=sparsity))
    assert torch.all((result.weight == 0).sum(1) == int(96 * sparsity))


def test_wanda_prunes_lowest_weight_times_input_norm_within_each_row():
    W, H = layer_problem(rows=16, cols=64)
    result = wanda(W, H, WandaConfig(sparsity=0.5))
    scores = W.abs() * torch.diagonal(H).sqrt()
    for row in range(16):
        assert scores[row][result.mask[row]].max() <= scores[row][~result.mask[row]].min()
    # the diagonal alone gives the same answer as the full Hessian
    assert torch.equal(wanda(W, torch.diagonal(H).clone(), WandaConfig(sparsity=0.5)).mask, result.mask)


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_nm_pattern(method):
    W, H = layer_problem(rows=16, cols=64)
    result = wanda(W, H, WandaConfig(nm="2:4")) if method == "wanda" else magnitude(W, MagnitudeConfig(nm="2:4"))
    assert torch.all((result.weight == 0).reshape(16, 16, 4).sum(-1) == 2)


def test_magnitude_per_layer_and_per_row():
    W, _ = layer_problem(rows=16, cols=64)
    layer = magnitude(W, MagnitudeConfig(sparsity=0.5))
    assert int(layer.mask.sum()) == 16 * 32
    assert W.abs()[layer.mask].max() <= W.abs()[~layer.mask].min()
    row = magnitude(W, MagnitudeConfig(sparsity=0.5, per_row=True))
    assert torch.all(row.mask.sum(1) == 32)
    assert torch.equal(magnitude(W, MagnitudeConfig(sparsity=0.0)).weight, W)

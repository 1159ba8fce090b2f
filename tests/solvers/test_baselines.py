import pytest
import torch

from prunellm.solvers import MagnitudeConfig, WandaConfig, lowest_fraction_mask, magnitude, wanda
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


def _stable_sort_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: a stable sort's first k indices of each row (ties left to right)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True) if k else mask


@pytest.mark.parametrize("per_row", [False, True], ids=["layer", "row"])
def test_masks_by_selection_are_the_stable_sorts_with_ties_left_to_right(per_row):
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, cols = torch.randint(1, 40, (2,), generator=gen).tolist()
        # Few distinct values: most scores tie with the cut-off one.
        scores = torch.randint(0, 1 + trial % 5, (rows, cols), generator=gen).float()
        for sparsity in (0.0, 0.1, 0.5, 0.7, 0.99):
            got = lowest_fraction_mask(scores, sparsity, per_row=per_row)
            if per_row:
                expected = _stable_sort_mask(scores, int(cols * sparsity))
            else:
                expected = _stable_sort_mask(scores.reshape(1, -1), int(rows * cols * sparsity)).reshape(rows, cols)
            assert torch.equal(got, expected), (rows, cols, sparsity)

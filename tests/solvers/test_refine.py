import pytest
import torch

from prunellm.solvers import SparseGPTConfig, layer_error, refine_on_mask, sparsegpt
from prunellm.solvers.alps import admm_search, alps_refine
from tests.conftest import layer_problem


def exact_on_mask(W, H, pruned):
    """Row by row, in float64: X_K = W_K + H_KK⁻¹ H_KP W_P."""
    W64, H64 = W.double(), H.double()
    X = torch.zeros_like(W64)
    for r in range(W.shape[0]):
        keep, drop = ~pruned[r], pruned[r]
        rhs = H64[keep][:, drop] @ W64[r, drop]
        X[r, keep] = W64[r, keep] + torch.linalg.solve(H64[keep][:, keep], rhs)
    return X.float()


def test_lsq_reaches_the_optimum_on_a_small_problem():
    W, H = layer_problem(rows=6, cols=24, tokens=256)
    start = sparsegpt(W, H, SparseGPTConfig(sparsity=0.5))
    refined = refine_on_mask(W, H, start.weight, start.mask, iterations=200, tolerance=1e-7)
    optimum = exact_on_mask(W, H, start.mask)
    torch.testing.assert_close(refined, optimum, rtol=1e-3, atol=1e-4)
    assert layer_error(W, refined, H) <= layer_error(W, optimum, H) * (1 + 1e-4)


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(sparsity=0.8), dict(nm=(2, 4))])
@pytest.mark.parametrize("seed", [0, 1])
def test_lsq_never_above_sparsegpt_and_keeps_the_mask(pattern, seed):
    W, H = layer_problem(rows=64, cols=128, seed=seed)
    start = sparsegpt(W, H, SparseGPTConfig(**pattern))
    refined = refine_on_mask(W, H, start.weight, start.mask, iterations=30)
    assert layer_error(W, refined, H) <= layer_error(W, start.weight, H)
    assert torch.all(refined[start.mask] == 0)
    assert (refined == 0).sum() == (start.weight == 0).sum()


def test_lsq_leaves_dead_inputs_alone():
    W, H = layer_problem(rows=8, cols=32)
    H[3, :] = 0
    H[:, 3] = 0
    start = sparsegpt(W, H, SparseGPTConfig(sparsity=0.5))
    refined = refine_on_mask(W, H, start.weight, start.mask)
    assert torch.isfinite(refined).all()
    assert torch.equal(refined[:, 3], start.weight[:, 3])


def budget(mask: torch.Tensor, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    if nm is not None:
        return mask.reshape(mask.shape[0], -1, nm[1]).sum(-1)  # zeros in every group
    return mask.sum(1) if per_row else mask.sum()


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(sparsity=0.8), dict(nm=(2, 4))])
@pytest.mark.parametrize("seed", [0, 1])
def test_alps_never_above_sparsegpt_or_lsq_and_keeps_the_budget(pattern, seed):
    W, H = layer_problem(rows=64, cols=128, seed=seed)
    start = sparsegpt(W, H, SparseGPTConfig(**pattern))
    lsq = refine_on_mask(W, H, start.weight, start.mask)
    refined, mask = alps_refine(W, H, start.weight, start.mask, nm=pattern.get("nm"))
    assert layer_error(W, refined, H) <= layer_error(W, lsq, H) <= layer_error(W, start.weight, H)
    assert torch.all(refined[mask] == 0)
    assert torch.equal(budget(mask, pattern.get("nm"), False), budget(start.mask, pattern.get("nm"), False))


@pytest.mark.parametrize("per_row", [False, True])
def test_admm_finds_a_better_support_at_high_sparsity(per_row):
    # At 70% SparseGPT's greedy mask leaves room: ADMM's support, solved exactly, must beat the
    # exact solution on SparseGPT's own mask, with the same zeros per row when asked.
    W, H = layer_problem(rows=64, cols=128, seed=3)
    start = sparsegpt(W, H, SparseGPTConfig(sparsity=0.7))
    lsq = refine_on_mask(W, H, start.weight, start.mask, iterations=200, tolerance=1e-7)
    mask = admm_search(W, H, start.weight, start.mask, per_row=per_row) == 0
    assert torch.equal(budget(mask, None, per_row), budget(start.mask, None, per_row))
    searched = refine_on_mask(W, H, W.masked_fill(mask, 0.0), mask, iterations=200, tolerance=1e-7)
    assert layer_error(W, searched, H) < 0.7 * layer_error(W, lsq, H)  # about 0.45 seen


@pytest.mark.parametrize("n, k", [(1_000, 1), (1_000, 1_000), (200_000, 1), (200_000, 200_000), (200_000, 60_000),
                                  (200_000, 199_990), (200_000, 7)])
@pytest.mark.parametrize("kind", ["normal", "ties", "spiky"])
def test_sampled_selection_is_the_exact_kth_largest(n, k, kind):
    from prunellm.solvers.alps import _kth_largest

    generator = torch.Generator().manual_seed(n + k)
    values = torch.randn(n, generator=generator).abs()
    if kind == "ties":  # a handful of distinct values: the bracket is all ties
        values = torch.randint(0, 5, (n,), generator=generator).float()
    elif kind == "spiky":  # sorted blocks: a strided sample sees a skewed picture
        values = torch.sort(values).values * torch.linspace(1, 1e6, n) ** 2
    assert _kth_largest(values, k).item() == values.kthvalue(n - k + 1).values.item()


@pytest.mark.parametrize("m, kept", [(4, 1), (4, 2), (4, 3), (4, 4), (8, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_group_selection_keeps_what_topk_keeps(m, kept, ties):
    from prunellm.solvers.alps import _keep_largest_in_groups

    generator = torch.Generator().manual_seed(m * 10 + kept)
    magnitude = torch.randn(64, 48, m, generator=generator).abs()  # (R, G, m)
    if ties:  # zeros, as dead inputs give, tie at the threshold in some groups
        magnitude[:, ::3, 1:] = 0.0
    keep = _keep_largest_in_groups(magnitude, kept)
    expected = torch.zeros_like(keep).scatter_(-1, magnitude.topk(kept, dim=-1).indices, True)
    assert torch.equal(keep, expected)

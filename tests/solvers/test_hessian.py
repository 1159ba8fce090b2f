import pytest
import torch

from prunellm.solvers import HessianAccumulator, damped_inverse, layer_error


def test_accumulating_in_chunks_equals_one_product():
    X = torch.randn(3, 100, 16)  # (B, T, C)
    acc = HessianAccumulator(16)
    for chunk in X.split(1):
        acc.add(chunk)
    flat = X.reshape(-1, 16)
    torch.testing.assert_close(acc.H, 2.0 / 300 * flat.t() @ flat, rtol=1e-5, atol=1e-6)
    diag = HessianAccumulator(16, diag_only=True)
    diag.add(X)
    torch.testing.assert_close(diag.diag, torch.diagonal(acc.H), rtol=1e-5, atol=1e-6)
    assert acc.num_tokens == 300


def test_upper_triangle_panels_give_the_full_symmetric_product_even_when_read_between_adds():
    X = torch.randn(4, 64, 600, dtype=torch.float64).float()  # (B, T, C): 600 columns make four panels
    acc = HessianAccumulator(600)
    assert len(acc._panels()) == 4
    acc.add(X[:2])
    flat = X[:2].reshape(-1, 600)
    torch.testing.assert_close(acc.H, 2.0 / 128 * flat.t() @ flat, rtol=1e-4, atol=1e-5)
    acc.add(X[2:])  # after a read: the mirrored lower half must follow the new upper half
    flat = X.reshape(-1, 600)
    torch.testing.assert_close(acc.H, 2.0 / 256 * flat.t() @ flat, rtol=1e-4, atol=1e-5)
    assert torch.equal(acc.H, acc.H.t())


def test_damped_inverse_factor_reconstructs_inverse():
    X = torch.randn(200, 12)
    H = X.t() @ X / 100
    inverse = damped_inverse(H, 0.01)
    damped = H + 0.01 * torch.diagonal(H).mean() * torch.eye(12)
    torch.testing.assert_close(inverse.upper.t() @ inverse.upper, torch.linalg.inv(damped), rtol=1e-4, atol=1e-5)
    assert torch.equal(inverse.upper, torch.triu(inverse.upper))


def test_reversed_factorization_gives_the_authors_factor_at_a_size_that_recurses():
    # 601 columns: the triangular inverse splits unevenly, twice; two dead inputs
    X = torch.randn(900, 601, dtype=torch.float64) * torch.exp(torch.randn(601, dtype=torch.float64))
    X[:, [7, 400]] = 0
    H = (X.t() @ X / 900).float()
    inverse = damped_inverse(H, 0.01)
    mean = torch.where(torch.diagonal(H) == 0, torch.ones(601), torch.diagonal(H)).mean().double()
    damped = H.double().clone()
    torch.diagonal(damped)[[7, 400]] = 1.0
    torch.diagonal(damped).add_(0.01 * mean)
    authors = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    torch.testing.assert_close(inverse.upper.double(), authors, rtol=1e-4, atol=1e-6 * authors.abs().max().item())
    assert inverse.dead.tolist().count(True) == 2 and inverse.dead[7] and inverse.dead[400]


def test_in_place_steps_give_the_same_factor_and_error_in_panels_of_any_size(monkeypatch):
    """The factor is reversed, inverted and checked in place, and the layer error summed, panel by
    panel: with panels far smaller than the matrix (odd sizes, a ragged last panel) the results
    equal whole-matrix ones."""
    from prunellm.solvers import hessian, relative_layer_error

    X = torch.randn(700, 333, dtype=torch.float64)
    H = (X.t() @ X / 700).float()
    W, W_hat = torch.randn(37, 333), torch.randn(37, 333)
    whole = damped_inverse(H, 0.01).upper
    D = W - W_hat
    error = float((D.double() @ H.double() * D.double()).sum() / (W.double() @ H.double() * W.double()).sum())
    monkeypatch.setattr(hessian, "PANEL_ELEMENTS", 1000)  # 3 rows of 333, the reversal in 56 chunks
    panels = damped_inverse(H, 0.01).upper
    torch.testing.assert_close(panels, whole, rtol=1e-5, atol=1e-6 * whole.abs().max().item())
    assert torch.equal(panels, torch.triu(panels)) and panels.is_contiguous()
    assert abs(relative_layer_error(W, W_hat, H) - error) < 1e-5 * error
    M = torch.arange(77.0).reshape(7, 11)
    assert torch.equal(hessian._reverse_in_place_(M.clone()), M.flip(0, 1))
    not_finite = torch.ones(10, 200)
    not_finite[9, 199] = float("nan")
    assert hessian.all_finite(torch.ones(10, 200)) and not hessian.all_finite(not_finite)
    assert hessian.all_finite(torch.ones(200)) and not hessian.all_finite(not_finite[9])
    assert not hessian.all_finite(torch.tensor(float("inf")))
    assert hessian.all_finite(torch.full((4, 300), 3e38))  # finite entries whose sum overflows


def test_layer_error_is_output_error():
    X = torch.randn(50, 8)
    W, W_hat = torch.randn(4, 8), torch.randn(4, 8)
    H = X.t() @ X
    expected = ((X @ W.t() - X @ W_hat.t()) ** 2).sum()
    torch.testing.assert_close(torch.tensor(layer_error(W, W_hat, H)), expected, rtol=1e-4, atol=1e-4)


def test_shrinking_toward_the_diagonal_interpolates_and_keeps_the_diagonal():
    from prunellm.solvers import shrink_to_diagonal

    X = torch.randn(64, 8)
    H = X.t() @ X
    assert shrink_to_diagonal(H, 0.0) is H
    assert torch.allclose(shrink_to_diagonal(H, 1.0), torch.diag(torch.diagonal(H)))
    half = shrink_to_diagonal(H, 0.5)
    assert torch.allclose(torch.diagonal(half), torch.diagonal(H))
    assert torch.allclose(half - torch.diag(torch.diagonal(half)), 0.5 * (H - torch.diag(torch.diagonal(H))))
    assert torch.linalg.eigvalsh(half).min() > 0  # a convex mix of two PSD matrices stays PSD


@pytest.mark.parametrize("shift", [0.0, 0.05], ids=["positive definite", "retried with more damping"])
def test_a_lent_hessian_is_factored_in_its_own_storage_to_the_same_factor(shift):
    """damped_inverse(H, restore=...) computes the factor in H's storage (no (C, C) copy), refilling
    H through `restore` before each retry: the same factor and damping as the copying path."""
    X = torch.randn(60, 96, generator=torch.Generator().manual_seed(2))  # fewer tokens than inputs: singular
    H = X.t() @ X / 60
    H -= shift * torch.diagonal(H).mean() * torch.eye(96)  # indefinite: 1% damping is not enough
    H[7, :] = H[:, 7] = 0.0  # a dead input
    copied = damped_inverse(H, 0.01)
    original = H.clone()
    restores = []

    def restore(into: torch.Tensor) -> None:
        restores.append(into.data_ptr())
        into.copy_(original)

    lent = damped_inverse(H, 0.01, restore=restore)
    assert lent.upper.data_ptr() == H.data_ptr()
    assert torch.equal(lent.upper, copied.upper) and torch.equal(lent.dead, copied.dead)
    assert (lent.damp_frac, lent.retries) == (copied.damp_frac, copied.retries)
    assert restores == [H.data_ptr()] * copied.retries
    assert (copied.retries > 0) == (shift > 0)

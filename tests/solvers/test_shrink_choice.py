"""GPTQ's Hessian shrinkage chosen per layer on held-out calibration windows."""

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.solvers import GPTQConfig, HessianAccumulator, HeldOut, gptq, layer_error, shrink_to_diagonal
from prunellm.solvers.shrink_choice import CANDIDATES, check_shrink, choose_shrink, fit_hessian


def _windows(count: int, tokens: int, cols: int, *, seed: int, mixing: torch.Tensor | None = None) -> torch.Tensor:
    """(count, tokens, cols) activations; correlated through `mixing` (cols, cols) if given."""
    x = torch.randn(count, tokens, cols, generator=torch.Generator().manual_seed(seed))
    return x @ mixing if mixing is not None else x


def test_held_out_windows_are_one_in_k_whatever_the_batches():
    cols, k = 24, 4
    x = _windows(9, 5, cols, seed=0)
    acc = HessianAccumulator(cols, held_out_every=k)
    for batch in (x[:3], x[3:4], x[4:8], x[8:]):  # batches of 3, 1, 4, 1 windows
        acc.add(batch)
    whole = HessianAccumulator(cols)
    whole.add(x)
    held = HessianAccumulator(cols)
    held.add(x[[1, 5]])  # windows 1, 1 + k
    torch.testing.assert_close(acc.H, whole.H)  # the held-out windows stay in H
    torch.testing.assert_close(acc.held_out.H, held.H)
    assert acc.held_out.num_tokens == 10 and acc.num_tokens == 45
    # H of the other windows, recovered from the two means
    fit = HessianAccumulator(cols)
    fit.add(x[[0, 2, 3, 4, 6, 7, 8]])
    torch.testing.assert_close(fit_hessian(acc.H, HeldOut(acc.held_out.H, 10 / 45)), fit.H, rtol=1e-4, atol=1e-5)


def test_a_two_dimensional_input_is_one_window():
    acc = HessianAccumulator(8, held_out_every=2)
    for seed in range(3):
        acc.add(torch.randn(6, 8, generator=torch.Generator().manual_seed(seed)))  # (tokens, cols)
    assert acc.held_out.num_tokens == 6 and acc.num_tokens == 18  # the second window only


def _layer(rows: int = 48, cols: int = 64) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(3))


def test_spurious_correlations_are_shrunk_and_real_ones_kept():
    cols = 64
    W = _layer(cols=cols)
    solve = lambda w, h: gptq(w, h, GPTQConfig(bits=3))  # noqa: E731
    # Real correlations (inputs mixed by a fixed matrix), held-out windows drawn the same way:
    # the plain Hessian is right and shrinking it only throws information away.
    mixing = torch.eye(cols) + 0.8 * torch.randn(cols, cols, generator=torch.Generator().manual_seed(4)) / cols ** 0.5
    H = HessianAccumulator(cols, held_out_every=4)
    H.add(_windows(16, 64, cols, seed=5, mixing=mixing))
    held = HeldOut(H.held_out.H, H.held_out.num_tokens / H.num_tokens)
    alpha, errors = choose_shrink(W, H.H, held, solve)
    assert alpha == 0.0 and errors[0] == min(errors)
    # Independent inputs but few fitted tokens: the fitted correlations are noise, the held-out
    # windows do not share them, and a shrunk Hessian generalizes better.
    H = HessianAccumulator(cols, held_out_every=4)
    H.add(_windows(16, 6, cols, seed=6))
    held = HeldOut(H.held_out.H, H.held_out.num_tokens / H.num_tokens)
    alpha, errors = choose_shrink(W, H.H, held, solve)
    assert alpha > 0.0 and len(errors) == len(CANDIDATES)
    # Each error is what that candidate's solve leaves on the held-out Hessian.
    fit = fit_hessian(H.H, held)
    index = CANDIDATES.index(alpha)
    assert errors[index] == pytest.approx(layer_error(W, solve(W, shrink_to_diagonal(fit, alpha)).weight, held.H))


def test_auto_quantizes_against_all_windows_with_the_chosen_shrinkage():
    cols = 64
    W = _layer(cols=cols)
    H = HessianAccumulator(cols, held_out_every=4)
    H.add(_windows(16, 6, cols, seed=6))
    held = HeldOut(H.held_out.H, H.held_out.num_tokens / H.num_tokens)
    for config in (GPTQConfig(bits=4, group_size=32, sym=True), GPTQConfig(gguf="q4_0")):
        auto = gptq(W, H.H, GPTQConfig(**{**config.__dict__, "hessian_shrink": "auto"}), held_out=held)
        assert auto.hessian_shrink in CANDIDATES
        fixed = gptq(W, H.H, GPTQConfig(**{**config.__dict__, "hessian_shrink": auto.hessian_shrink}))
        assert torch.equal(auto.weight, fixed.weight) and fixed.hessian_shrink is None


def test_auto_without_held_out_statistics_and_bad_settings_are_refused():
    W, H = _layer(), torch.eye(64)
    with pytest.raises(PrunellmError, match="held-out"):
        gptq(W, H, GPTQConfig(hessian_shrink="auto"))
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(PrunellmError, match="hessian_shrink"):
            check_shrink(bad)
    with pytest.raises(PrunellmError, match="share"):
        fit_hessian(H, HeldOut(H, 1.0))

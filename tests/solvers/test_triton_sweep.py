"""The Triton sweep kernel gives the reference sweep's result, for every case it covers.

Without a GPU they run on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which executes the same kernel code; with one, compiled, on the GPU.
"""

import pytest
import torch

from prunellm.solvers import damped_inverse
from prunellm.solvers.quant import fit_minmax
from prunellm.solvers.sweep import SweepGrid, obs_sweep
from prunellm.solvers.triton_sweep import supports, triton_obs_sweep
from tests.conftest import layer_problem

pytest.importorskip("triton")

ROWS, COLS = 20, 128  # the interpreter runs each program in numpy: small problems, about a second each
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on_device(W, H):
    return W.to(DEVICE), H.to(DEVICE)


def _row_grid(W, bits=4, sym=False):
    scale, zero = fit_minmax(W, bits, sym)
    return SweepGrid(bits, sym, scale[:, None], zero[:, None], torch.zeros(W.shape[1], dtype=torch.long, device=W.device))


def _static_groups(W, bits=3, group=32):
    # act-order's grid: each group's scale fixed upfront, columns visited in a permuted order
    rows, cols = W.shape
    scale, zero = fit_minmax(W.reshape(-1, group), bits, False)
    order = torch.randperm(cols, generator=torch.Generator().manual_seed(0))
    groups = (torch.arange(cols) // group)[order].to(W.device)
    return SweepGrid(bits, False, scale.reshape(rows, -1), zero.reshape(rows, -1), groups)


CASES = {
    "50%": lambda W: dict(sparsity=0.5),
    "70%, blocks of 64": lambda W: dict(sparsity=0.7, block_size=64),
    "2:4": lambda W: dict(nm=(2, 4)),
    "4:8": lambda W: dict(nm=(4, 8)),
    "a given mask": lambda W: dict(fixed_mask=W.abs() < 0.3),
    "50% + 4-bit per row": lambda W: dict(sparsity=0.5, grid=_row_grid(W)),
    "2:4 + 4-bit per row": lambda W: dict(nm=(2, 4), grid=_row_grid(W)),
    "4-bit symmetric, nothing pruned": lambda W: dict(grid=_row_grid(W, sym=True)),
    "3-bit static groups (act-order)": lambda W: dict(grid=_static_groups(W)),
}


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_the_reference_sweep(name):
    W, H = _on_device(*layer_problem(rows=ROWS, cols=COLS, seed=5))
    U = damped_inverse(H).upper
    options = CASES[name](W)
    assert supports(options.get("nm"), options.get("grid"), options.get("block_size", 128))
    expected, expected_mask = obs_sweep(W.clone(), U, **options)
    weight, mask = triton_obs_sweep(W.clone(), U, **options)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(weight[mask] == 0)


def test_rows_beyond_a_whole_tile_and_a_short_last_block():
    W, H = _on_device(*layer_problem(rows=37, cols=96, seed=6))  # 37 rows: the last tile is partial; blocks of 64 + 32
    U = damped_inverse(H).upper
    expected, expected_mask = obs_sweep(W.clone(), U, block_size=64, nm=(2, 4))
    weight, mask = triton_obs_sweep(W.clone(), U, block_size=64, nm=(2, 4))
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)


def test_grids_fitted_during_the_sweep_are_left_to_the_blocked_sweep():
    W, _ = layer_problem(rows=8, cols=64)
    fitted = SweepGrid(4, False, torch.ones(8, 2), torch.zeros(8, 2), torch.arange(64) // 32, group_size=32,
                       fit_on_the_fly=True)
    assert not supports(None, fitted, 128)
    assert not supports((16, 32), None, 128)
    with pytest.raises(ValueError, match="needs blocked_sweep"):
        triton_obs_sweep(W, torch.eye(64), grid=fitted)

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.solvers import (MagnitudeConfig, SparseGPTConfig, WandaConfig, layer_error, magnitude,
                              sparsegpt, wanda)
from tests.conftest import layer_problem


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 3), (3, 7)])
def test_nm_pattern_is_exact(nm):
    n, m = nm
    W, H = layer_problem(rows=16, cols=m * 12)
    result = sparsegpt(W, H, SparseGPTConfig(nm=nm))
    zeros = (result.weight == 0).reshape(16, -1, m).sum(-1)
    assert torch.all(zeros == n)
    assert torch.equal(result.mask, result.weight == 0)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_sparsity_meets_target(sparsity):
    W, H = layer_problem(rows=32, cols=256)
    result = sparsegpt(W, H, SparseGPTConfig(sparsity=sparsity))
    # The reference's per-block rule prunes one weight beyond the fraction in each block.
    blocks = 2
    assert int(32 * 256 * sparsity) <= int(result.mask.sum()) <= int(32 * 256 * sparsity) + blocks


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(sparsity=0.7), dict(nm=(2, 4))])
def test_layer_error_below_magnitude_and_wanda(pattern):
    W, H = layer_problem(rows=64, cols=128, seed=3)
    ours = layer_error(W, sparsegpt(W, H, SparseGPTConfig(**pattern)).weight, H)
    mag = layer_error(W, magnitude(W, MagnitudeConfig(**pattern)).weight, H)
    wan = layer_error(W, wanda(W, H, WandaConfig(**pattern)).weight, H)
    assert ours < wan < mag


@pytest.mark.parametrize("bits,group_size,sym", [(4, None, False), (3, None, True), (4, 32, False), (8, 64, True)])
def test_joint_quantization_lies_on_grid_and_keeps_zeros(bits, group_size, sym):
    W, H = layer_problem(rows=16, cols=128)
    result = sparsegpt(W, H, SparseGPTConfig(sparsity=0.5, bits=bits, group_size=group_size, sym=sym))
    grid = result.grid
    scale, zero = grid.expand(128)
    codes = torch.round(result.weight / scale) + zero
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    torch.testing.assert_close(scale * (codes - zero), result.weight, rtol=0, atol=1e-6)
    assert torch.all(result.weight[result.mask] == 0)
    assert result.mask.float().mean() >= 0.5


def test_dead_inputs_get_zero_weights():
    W, H = layer_problem(rows=8, cols=64)
    H[5, :] = 0
    H[:, 5] = 0
    result = sparsegpt(W, H, SparseGPTConfig(sparsity=0.5))
    assert torch.all(result.weight[:, 5] == 0)
    assert torch.isfinite(result.weight).all()


def test_indefinite_hessian_is_retried_with_more_damping():
    W, H = layer_problem(rows=8, cols=32)
    H = H - 0.05 * torch.diagonal(H).mean() * torch.eye(32)  # indefinite: 1% damping is not enough
    assert torch.linalg.eigvalsh(H).min() < 0
    result = sparsegpt(W, H, SparseGPTConfig(sparsity=0.5))
    assert result.damp_retries > 0 and result.damp_frac > 0.01
    assert torch.isfinite(result.weight).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(nm=(4, 4)), "n < m"),
    (dict(nm="2-4"), "2:4"), (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(group_size=0), "group_size"),
    (dict(block_size=0), "block_size"), (dict(damp_frac=-1), "damp_frac"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(PrunellmError, match=message):
        SparseGPTConfig(**kwargs)


def test_bad_problems_are_refused():
    W, H = layer_problem(rows=8, cols=30)
    with pytest.raises(PrunellmError, match="not divisible by m=4"):
        sparsegpt(W, H, SparseGPTConfig(nm=(2, 4)))
    with pytest.raises(PrunellmError, match="group_size 16 does not divide"):
        sparsegpt(W, H, SparseGPTConfig(bits=4, group_size=16))
    W[0, 0] = float("nan")
    with pytest.raises(PrunellmError, match="NaN"):
        sparsegpt(W, H)
    with pytest.raises(PrunellmError, match="does not match"):
        sparsegpt(torch.randn(4, 8), torch.eye(9))


@pytest.mark.parametrize("config", [SparseGPTConfig(sparsity=0.5), SparseGPTConfig(nm=(2, 4), bits=4),
                                    SparseGPTConfig(sparsity=0.0, bits=4, group_size=32),
                                    SparseGPTConfig(sparsity=0.5, gguf="q4_0")],
                         ids=["unstructured", "2:4+4bit", "gptq", "q4_0"])
def test_a_consumed_weight_is_solved_in_place_to_the_same_result(config):
    """consume_weight=True: the sweep may work in the caller's W (no copy of its own), same result;
    without it, W is left as it was."""
    W, H = layer_problem(rows=16, cols=128, seed=5)
    kept = W.clone()
    copied = sparsegpt(W, H, config)
    assert torch.equal(W, kept)
    consumed = sparsegpt(W, H, config, consume_weight=True)
    assert torch.equal(consumed.weight, copied.weight)
    if config.gguf is None and config.sparsity > 0:  # GPTQ's act-order sweeps a permuted copy anyway
        assert consumed.weight.data_ptr() == W.data_ptr()

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.methods import build_method, method_names
from prunellm.solvers import layer_error
from tests.conftest import layer_problem


def test_registry():
    assert {"sparsegpt", "gptq", "wanda", "magnitude", "noop"} <= set(method_names())
    with pytest.raises(PrunellmError, match="unknown method 'obs'"):
        build_method("obs")
    with pytest.raises(PrunellmError, match="does not take bits"):
        build_method("noop", bits=4)


@pytest.mark.parametrize("name", ["wanda", "magnitude"])
def test_mask_methods_quantize_after_pruning_and_keep_zeros(name):
    W, H = layer_problem(rows=16, cols=64)
    pruned = build_method(name, sparsity=0.5).compress(W, H)
    method = build_method(name, sparsity=0.5, bits=4)
    assert method.statistics == "hessian"
    both = method.compress(W, H)
    assert torch.equal(both.weight == 0, pruned.weight == 0) or (both.weight == 0).sum() >= (pruned.weight == 0).sum()
    assert torch.all(both.weight[pruned.mask] == 0)
    assert both.grid is not None and both.grid.bits == 4
    assert layer_error(W, both.weight, H) >= layer_error(W, pruned.weight, H) * 0.99


def test_statistics_needed():
    assert build_method("magnitude").statistics == "none"
    assert build_method("wanda").statistics == "diag"
    assert build_method("sparsegpt").statistics == "hessian"
    assert build_method("gptq", bits=3).describe()["bits"] == 3

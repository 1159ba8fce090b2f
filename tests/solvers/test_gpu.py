"""The solvers on a GPU give what they give on the CPU (run with `pytest -m gpu`)."""

import pytest
import torch

from prunellm.solvers import GPTQConfig, SparseGPTConfig, gptq, layer_error, sparsegpt
from tests.conftest import layer_problem

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("config", [SparseGPTConfig(sparsity=0.5), SparseGPTConfig(nm=(2, 4)),
                                    SparseGPTConfig(sparsity=0.5, bits=4)])
def test_sparsegpt_on_gpu_matches_cpu(config):
    W, H = layer_problem(rows=128, cols=256)
    cpu = sparsegpt(W, H, config)
    gpu = sparsegpt(W.cuda(), H.cuda(), config)
    assert gpu.weight.is_cuda
    agree = (cpu.mask == gpu.mask.cpu()).float().mean()
    assert agree > 0.999
    assert layer_error(W, gpu.weight.cpu(), H) <= layer_error(W, cpu.weight, H) * 1.01


def test_gptq_on_gpu_matches_cpu():
    W, H = layer_problem(rows=128, cols=256)
    cpu = gptq(W, H, GPTQConfig(bits=4, group_size=64))
    gpu = gptq(W.cuda(), H.cuda(), GPTQConfig(bits=4, group_size=64))
    assert layer_error(W, gpu.weight.cpu(), H) <= layer_error(W, cpu.weight, H) * 1.01


@pytest.mark.parametrize("config", [SparseGPTConfig(sparsity=0.5), SparseGPTConfig(nm=(2, 4)),
                                    SparseGPTConfig(sparsity=0.5, bits=4), SparseGPTConfig(nm=(4, 8), bits=3)])
def test_triton_sweep_on_gpu_matches_the_reference_sweep(config):
    pytest.importorskip("triton")
    W, H = layer_problem(rows=256, cols=512)
    W, H = W.cuda(), H.cuda()
    fast = sparsegpt(W, H, config)  # the Triton kernel: a CUDA device and a case it covers
    reference = sparsegpt(W, H, config, sweep="reference")
    assert (fast.mask == reference.mask).float().mean() > 0.999
    assert layer_error(W, fast.weight, H) <= layer_error(W, reference.weight, H) * 1.001


def test_half_precision_inputs_accumulate_the_float32_product_on_gpu():
    from prunellm.solvers import HessianAccumulator

    x = torch.randn(3, 256, 640, device="cuda").half()  # (B, T, C): 640 columns, four panels
    acc = HessianAccumulator(640, device="cuda")
    for chunk in x.split(1):
        acc.add(chunk)
    flat = x.reshape(-1, 640).float()
    torch.testing.assert_close(acc.H, 2.0 / flat.shape[0] * flat.t() @ flat, rtol=1e-4, atol=1e-4)

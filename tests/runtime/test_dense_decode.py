"""Dense layers on the native CPU kernels at decode (runtime/dense_decode.py): the kernels read a
dense float weight in place and equal x @ Wᵀ up to float32 rounding at every dispatch level;
`prunellm.load(DIR, "cpu")` sends a bfloat16 model's decode calls through them with ties kept,
prefill stays torch's bit for bit, and a weight changed after load goes back to torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, DynamicCache

import prunellm
from prunellm.runtime import cpu_kernels
from prunellm.runtime.bench_infer import cache_argument, layer_paths
from prunellm.runtime.dense_decode import DecodeLinear
from prunellm.runtime.token_limits import MOST_TOKENS
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_config, tokens, word_tokenizer

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="native CPU kernels not built")


@pytest.fixture(params=cpu_kernels.supported_levels() if cpu_kernels.available() else ["portable"])
def level(request, monkeypatch) -> str:
    monkeypatch.setenv(cpu_kernels.ENV, request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_dense_weight_read_in_place_equals_the_product(level, dtype) -> None:
    weight = torch.randn(203, 192, generator=torch.Generator().manual_seed(1)).to(dtype)  # rows not of 16
    native = cpu_kernels.prepare_dense(weight)
    assert native is not None and native.layout.values.data_ptr() == weight.data_ptr()  # no copy
    for count in (1, 2, 5, 16, 19):
        x = torch.randn(count, 192, generator=torch.Generator().manual_seed(count))
        reference = x @ weight.float().T
        error = (cpu_kernels.matmul(x, native) - reference).abs()
        assert bool((error <= 1e-5 * (x.abs() @ weight.float().abs().T) + 1e-6).all()), level


def test_weights_the_kernels_cannot_read_in_place_are_left_to_torch() -> None:
    assert cpu_kernels.prepare_dense(torch.randn(8, 100).bfloat16()) is None  # columns not of 64
    assert cpu_kernels.prepare_dense(torch.randn(128, 64).bfloat16().T) is None  # not contiguous
    assert cpu_kernels.prepare_dense(torch.zeros(8, 64, dtype=torch.int8)) is None


def _bfloat16_dir(root: Path) -> Path:
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
    model.save_pretrained(root / "bf16")
    word_tokenizer(WORDS).save_pretrained(root / "bf16")
    return root / "bf16"


def _logits(model: nn.Module, ids: torch.Tensor, cache) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=True, **{cache_argument(model): cache}).logits


def _undo(model: nn.Module) -> nn.Module:
    """The same model with its DecodeLinear layers back as plain nn.Linear (same Parameters)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DecodeLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    return model


def test_load_decodes_dense_bfloat16_layers_on_the_kernels(tmp_path: Path) -> None:
    directory = _bfloat16_dir(tmp_path)
    model = prunellm.load(directory, "cpu")
    assert model.dtype == torch.bfloat16  # the stored dtype, not float32 for torch's products
    off = prunellm.load(directory, "cpu", dense_kernels=False)
    assert not any(isinstance(m, DecodeLinear) for m in off.modules())
    linears = [m for m in off.modules() if isinstance(m, nn.Linear)]
    assert layer_paths(model) == {"dense bfloat16: cpu kernel": len(linears)}
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the tie kept
    assert model.state_dict().keys() == off.state_dict().keys()

    plain = _undo(prunellm.load(directory, "cpu"))
    prompt = tokens(1, MOST_TOKENS + 4, seed=3)
    cache_a, cache_b = DynamicCache(), DynamicCache()
    assert torch.equal(_logits(model, prompt, cache_a), _logits(plain, prompt, cache_b))  # prefill: torch's
    for seed in range(4):  # decode: the kernels, float32 sums of the same bfloat16 weights
        ids = tokens(1, 1, seed=seed)
        a, b = _logits(model, ids, cache_a).float(), _logits(plain, ids, cache_b).float()
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02)


def test_a_weight_changed_after_load_goes_back_to_torch(tmp_path: Path) -> None:
    model = prunellm.load(_bfloat16_dir(tmp_path), "cpu")
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, DecodeLinear)
    model.float()  # new float32 weights: the kernel's view of the old bfloat16 ones is stale
    x = torch.randn(1, 1, layer.in_features)
    assert torch.equal(layer(x), F.linear(x, layer.weight))

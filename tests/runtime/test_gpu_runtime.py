"""The runtime on a GPU: kernels chosen at decode, the same tokens as the dense model, a CUDA
graph replay of decode steps (run with `pytest -m gpu`; never run by CI, which has no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunellm
from prunellm.formats.compressed.checkpoint import save_compressed
from prunellm.methods import build_method
from prunellm.runtime.bench_infer import InferConfig, measure_variant
from prunellm.runtime.linear import CompressedLinear
from prunellm.walker import WalkConfig, compress_model
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_model, tokens, word_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory) -> Path:
    """A tiny Llama, 2:4 + 4-bit with groups of 32 (a kernel's K tile), saved in float16."""
    model = tiny_model("llama")
    result = compress_model(model, build_method("sparsegpt", nm="2:4", bits=4, group_size=32), tokens(),
                            WalkConfig(progress=False, layer_errors=False))
    out, _ = save_compressed(model, word_tokenizer(WORDS), tmp_path_factory.mktemp("g") / "c",
                             [r.name for r in result.layers], grids=result.quant_grids, nm=(2, 4), dtype="float16")
    return out


def test_decode_on_kernels_follows_the_dense_model(fp16_dir: Path) -> None:
    kept = prunellm.load(fp16_dir, "cuda")
    dense = prunellm.load(fp16_dir, "cuda", keep_compressed=False)
    assert any(isinstance(m, CompressedLinear) for m in kept.modules())
    ids = tokens(1, 12, seed=3).cuda()
    with torch.no_grad():
        a, b = kept(ids).logits.float(), dense(ids).logits.float()
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2)
    greedy = [m.generate(ids, max_new_tokens=8, do_sample=False)[0, 12:].tolist() for m in (kept, dense)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize("variant", ["dense", "compressed"])
def test_cuda_graph_decode_runs(fp16_dir: Path, variant: str) -> None:
    config = InferConfig(prompt_tokens=16, new_tokens=8, repeats=1, device="cuda", cuda_graph=True)
    row = measure_variant(fp16_dir, variant, config)
    assert row["decode_tokens_per_second"] > 0 and row["peak_memory_bytes"] > 0


def test_layers_no_kernel_reads_are_expanded_by_default(tmp_path: Path) -> None:
    model = tiny_model("llama")
    result = compress_model(model, build_method("sparsegpt", sparsity=0.5), tokens(),
                            WalkConfig(progress=False, layer_errors=False))
    out, _ = save_compressed(model, None, tmp_path / "c", [r.name for r in result.layers], dtype="float16")
    default = prunellm.load(out, "cuda")
    assert not any(isinstance(m, CompressedLinear) for m in default.modules())  # bitmask floats: no kernel
    kept = prunellm.load(out, "cuda", keep_compressed=True)
    assert any(isinstance(m, CompressedLinear) for m in kept.modules())

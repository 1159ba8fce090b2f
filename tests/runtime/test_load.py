"""`prunellm.load`, CompressedLinear, generation and the inference benchmark on tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import prunellm
from prunellm.errors import PrunellmError
from prunellm.io import save_model
from prunellm.formats.compressed.checkpoint import read_compressed, save_compressed
from prunellm.formats.compressed.layer import compress_weight, decompress_weight
from prunellm.methods import build_method
from prunellm.runtime import cpu_kernels
from prunellm.runtime.bench_infer import InferConfig, format_rows, measure_variant, weight_bytes
from prunellm.runtime.generate import generate_text
from prunellm.runtime.linear import CompressedLinear
from prunellm.runtime.load import keeps_compressed
from prunellm.walker import WalkConfig, compress_model
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_model, tokens, word_tokenizer

QUIET = {"progress": False, "layer_errors": False}


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory) -> Path:
    """A tiny Llama pruned 2:4 and quantized to 4 bits, saved compressed in float32."""
    model = tiny_model("llama")
    result = compress_model(model, build_method("sparsegpt", nm="2:4", bits=4, group_size=16), tokens(),
                            WalkConfig(**QUIET))
    out, _ = save_compressed(model, word_tokenizer(WORDS), tmp_path_factory.mktemp("c") / "c",
                             [r.name for r in result.layers], grids=result.quant_grids, nm=(2, 4), dtype="float32")
    return out


def test_compressed_linear_is_the_dense_layer() -> None:
    torch.manual_seed(0)
    weight = torch.randn(12, 32)
    weight[torch.rand(12, 32) < 0.6] = 0
    bias = torch.randn(12)
    layer = CompressedLinear(compress_weight(weight), bias)
    x = torch.randn(2, 5, 32)  # (B, T, in)
    assert torch.equal(layer(x), F.linear(x, weight, bias))
    assert "bitmask" in repr(layer) and layer.in_features == 32 and layer.out_features == 12
    assert not layer._kernel_for(x.reshape(-1, 32))  # a CPU tensor never goes to a GPU kernel


def test_keep_compressed_holds_less_memory(compressed_dir: Path) -> None:
    dense = prunellm.load(compressed_dir, "cpu", keep_compressed=False)
    kept = prunellm.load(compressed_dir, "cpu", keep_compressed=True)
    assert weight_bytes(kept) < 0.7 * weight_bytes(dense)  # the repacked buffers counted too
    assert keeps_compressed(torch.device("cpu"), None) == cpu_kernels.available()  # the native kernels read them
    assert not keeps_compressed(torch.device("cpu"), False)
    ids = tokens(1, 24, seed=2)  # a prefill: every layer expanded for the call, bit for bit
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, kept(ids).logits)


def test_plain_directories_load_too(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    save_model(model, word_tokenizer(WORDS), tmp_path / "hf")
    loaded = prunellm.load(tmp_path / "hf", "cpu")
    assert type(loaded) is type(model) and not loaded.training
    with pytest.raises(PrunellmError, match="not a model directory"):
        prunellm.load(tmp_path / "missing", "cpu")


def test_generate_is_the_same_from_both_variants(compressed_dir: Path) -> None:
    tokenizer = word_tokenizer(WORDS)
    texts = []
    for keep in (False, True):
        model = prunellm.load(compressed_dir, "cpu", keep_compressed=keep)
        generation = generate_text(model, tokenizer, "w1 w2 w3", max_new_tokens=6)
        assert generation.new_tokens == 6 and generation.prompt_tokens == 3 and generation.seconds > 0
        texts.append(generation.text)
    assert texts[0] == texts[1] and texts[0].strip()
    with pytest.raises(PrunellmError, match="max-new-tokens"):
        generate_text(model, tokenizer, "w1", max_new_tokens=0)


def test_the_memory_baseline_holds_the_model_classes_code(compressed_dir: Path, tmp_path: Path) -> None:
    """bench-infer's peak is counted from after the modeling module's import (its libraries are
    not the model's memory); a path with no class to tell imports nothing and does not fail."""
    script = ("import sys; from prunellm.runtime.bench_infer import import_model_code; "
              "module = 'transformers.models.llama.modeling_llama'; before = module in sys.modules; "
              f"import_model_code({str(tmp_path / 'model.gguf')!r}); after_nothing = module in sys.modules; "
              f"import_model_code({str(compressed_dir)!r}); print(before, after_nothing, module in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]


def test_bench_infer_measures_both_variants(compressed_dir: Path) -> None:
    config = InferConfig(prompt_tokens=8, new_tokens=4, batch_size=2, repeats=1, device="cpu")
    rows = [measure_variant(compressed_dir, variant, config) for variant in ("dense", "compressed")]
    for row in rows:
        assert row["prefill_tokens_per_second"] > 0 and row["decode_tokens_per_second"] > 0
        # in this process the allocator reuses what earlier tests freed: only the child processes
        # of `compare` (the CLI test) see a variant's own peak
        assert row["peak_memory_bytes"] >= 0 and row["weight_bytes"] > 0
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"]
    assert rows[0]["layer_paths"] == {} and sum(rows[1]["layer_paths"].values()) == 21
    path = "cpu kernel" if cpu_kernels.available() else "expanded per call"
    assert set(rows[1]["layer_paths"]) == {f"nm 2:4 4-bit g16: {path}"}
    assert 0 <= rows[1]["run_peak_memory_bytes"] <= rows[1]["peak_memory_bytes"]
    table = format_rows(rows)
    assert "compressed/dense: weights" in table and table.count("\n") == 4
    assert f"compressed layers (decode; prefill expands per call): 21 nm 2:4 4-bit g16: {path}" in table


def test_decompressed_weights_match_the_loaded_layers(compressed_dir: Path) -> None:
    model = prunellm.load(compressed_dir, "cpu", keep_compressed=True)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, CompressedLinear) and layer.spec.layout == "nm" and layer.spec.bits == 4
    weight = layer.dense_weight()  # from the native layout when repacked for it, else the parts
    stored = read_compressed(compressed_dir).layers["model.layers.0.mlp.down_proj"]
    assert torch.equal(weight, decompress_weight(stored))
    assert ((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all()  # 2:4 held


def test_a_dense_budget_expands_the_first_layers_that_fit(compressed_dir: Path) -> None:
    one_layer = 64 * 64 * 4  # q_proj of the tiny Llama in float32
    model = prunellm.load(compressed_dir, "cpu", keep_compressed=True, dense_budget=one_layer)
    kinds = [type(module).__name__ for name, module in model.named_modules() if name.endswith("_proj")]
    assert kinds[0] == "Linear" and set(kinds[1:]) <= {"Linear", "CompressedLinear"} and "CompressedLinear" in kinds
    assert kinds.count("Linear") == 1
    reference = prunellm.load(compressed_dir, "cpu", keep_compressed=False)
    ids = tokens(1, 24, seed=4)  # a prefill: bit for bit
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    with pytest.raises(PrunellmError, match="dense_budget"):
        prunellm.load(compressed_dir, "cpu", keep_compressed=True, dense_budget=-1)


@pytest.mark.parametrize("layout", ["bitmask", "nm", "quant"])
def test_cpu_bands_give_the_dense_result(layout: str, monkeypatch) -> None:
    from prunellm.runtime import linear
    from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize

    monkeypatch.setattr(linear, "CPU_BAND_ELEMENTS", 5 * 48)  # bands of 16 rows (the floor) over 53 rows
    torch.manual_seed(1)
    weight = torch.randn(53, 48)
    if layout == "nm":
        weight.reshape(53, 12, 4)[..., :2] = 0
    scale, zero = fit_minmax(weight, 4, sym=False)
    weight = quantize(weight, scale[:, None], zero[:, None], 4)
    if layout == "bitmask":
        weight[torch.rand(53, 48) < 0.7] = 0
    packed = compress_weight(weight, QuantGrid(4, False, None, scale[:, None], zero[:, None]))
    assert packed.spec.layout == layout
    bias = torch.randn(53)
    layer = CompressedLinear(packed, bias)
    for x in (torch.randn(1, 48), torch.randn(1, 1, 48), torch.randn(2, 7, 48)):  # decode in bands, prefill whole
        assert torch.equal(layer(x), F.linear(x, weight, bias))


def test_the_top_level_api_loads_model_and_tokenizer(compressed_dir: Path) -> None:
    model = prunellm.load(compressed_dir, "cpu")
    tokenizer = prunellm.load_tokenizer(compressed_dir)
    ids = tokenizer("w1 w2 w3", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape == (1, 6)

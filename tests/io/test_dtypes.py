"""Which dtype a source stores, which one a result is saved in, and the rounding between them."""

from __future__ import annotations

import json

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.io.dtypes import cast_weights, hf_save_dtype, method_quantizes, round_weights, stored_dtype
from prunellm.methods import build_method
from tests.tiny_models import tiny_model

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_the_stored_dtype_is_the_configs_else_the_first_tensors(dtype, tmp_path):
    tiny_model("llama").to(dtype).save_pretrained(tmp_path)
    assert stored_dtype(tmp_path) == dtype
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stored_dtype(tmp_path) == dtype  # from the safetensors header


def test_an_older_config_key_and_a_gguf_file(tmp_path):
    tiny_model("llama").to(F16).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stored_dtype(tmp_path) == F16
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert stored_dtype(gguf) == F32  # what its blocks dequantize to
    with pytest.raises(PrunellmError, match="not found"):
        stored_dtype(tmp_path / "missing")


# (choice, stored, compute, quantizes) -> saved dtype, or the start of the error
CASES = {
    ("auto", BF16, F32, False): BF16,  # a sparse result goes back to the source's dtype
    ("auto", F16, F32, False): F16,
    ("auto", F32, F32, False): F32,
    ("auto", BF16, "auto", False): BF16,  # off CPU the model computes in its stored dtype
    ("float32", BF16, F32, False): F32,
    ("float16", BF16, F32, False): F16,
    ("auto", BF16, F32, True): F32,  # a quantized result stays where its grid is exact
    ("auto", BF16, "auto", True): BF16,
    ("float32", BF16, BF16, True): F32,  # widening is exact
    ("bfloat16", BF16, BF16, True): BF16,
    ("bfloat16", BF16, F32, True): r"off their grid \(computed in float32\): save in float32, or use --format",
    ("float16", BF16, BF16, True): r"off their grid \(computed in bfloat16\): save in bfloat16 or float32, or",
    ("int8", F32, F32, False): "unknown save dtype 'int8'",
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_save_dtype_rules(case):
    choice, stored, compute, quantizes = case
    expected = CASES[case]
    if isinstance(expected, str):
        with pytest.raises(PrunellmError, match=expected):
            hf_save_dtype(choice, stored=stored, compute=compute, quantizes=quantizes)
    else:
        assert hf_save_dtype(choice, stored=stored, compute=compute, quantizes=quantizes) == expected


def test_which_methods_quantize():
    assert not method_quantizes(build_method("sparsegpt", sparsity=0.5).describe())
    assert not method_quantizes(build_method("wanda", sparsity=0.5).describe())
    assert not method_quantizes(build_method("noop").describe())
    assert method_quantizes(build_method("sparsegpt", sparsity=0.5, bits=4).describe())
    assert method_quantizes(build_method("gptq", bits=8).describe())
    assert method_quantizes(build_method("gptq", gguf="q4_0").describe())


def test_rounding_keeps_the_dtype_and_gives_the_cast_values():
    model = tiny_model("gpt2")  # a tied head: one parameter under two names
    expected = {name: p.detach().to(BF16) for name, p in model.named_parameters()}
    round_weights(model, BF16)
    for name, param in model.named_parameters():
        assert param.dtype == F32
        assert torch.equal(param.detach().to(BF16), expected[name]) and torch.equal(param.to(BF16).float(), param)
    cast_weights(model, BF16)
    assert {p.dtype for p in model.parameters()} == {BF16}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), expected[name]), name


def test_a_value_beyond_float16_is_an_error_naming_the_weight():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 1e5
    with pytest.raises(PrunellmError, match=r"model.layers.0.mlp.down_proj.weight has values beyond float16's range"):
        round_weights(model, F16)
    round_weights(model, BF16)  # bfloat16 holds it
    assert model.model.layers[0].mlp.down_proj.weight[0, 0] == 99840.0


@pytest.mark.parametrize("where", ["model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"])
def test_the_compressed_format_refuses_a_value_its_float16_cannot_hold(where, tmp_path):
    from prunellm.formats.compressed.checkpoint import save_compressed

    model = tiny_model("llama")
    with torch.no_grad():
        model.get_parameter(where)[0, 0] = -1e5
    with pytest.raises(PrunellmError, match=rf"{where} has values beyond float16's range"):
        save_compressed(model, None, tmp_path / "out", ["model.layers.0.mlp.down_proj"])  # auto: float16
    assert not list(tmp_path.iterdir())

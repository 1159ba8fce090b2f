from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

from prunellm.errors import PrunellmError
from prunellm.io import check_output_dir, save_model

from .conftest import logits_of, tiny_gpt2, tiny_llama


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama-gqa", "gpt2-tied"])
def test_save_reload_gives_identical_logits(
    build, tmp_path: Path, tiny_tokenizer, input_ids: torch.Tensor
) -> None:
    model = build()
    out = save_model(model, tiny_tokenizer, tmp_path / "out")
    assert out == tmp_path / "out"
    assert entries(tmp_path) == ["out"]  # no staging directory left behind
    assert "model.safetensors" in entries(out) and "tokenizer.json" in entries(out)
    assert "report.json" not in entries(out)

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded) is type(model)
    assert torch.equal(logits_of(reloaded, input_ids), logits_of(model, input_ids))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("the quick fox").input_ids == tiny_tokenizer("the quick fox").input_ids


def test_tied_embeddings_survive(tmp_path: Path) -> None:
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    out = save_model(model, None, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys()  # stored once


def test_tokenizer_none_writes_no_tokenizer(tmp_path: Path) -> None:
    out = save_model(tiny_llama(), None, tmp_path / "out")
    assert not any(name.startswith("tokenizer") for name in entries(out))


def test_report_is_written(tmp_path: Path) -> None:
    report = {"method": "sparsegpt", "sparsity": 0.5, "ppl": {"wikitext2": 21.25}, "model": tmp_path}
    out = save_model(tiny_llama(), None, tmp_path / "out", report=report)
    assert json.loads((out / "report.json").read_text()) == {**report, "model": str(tmp_path)}


def test_existing_output_is_refused_then_overwritten(tmp_path: Path) -> None:
    out = save_model(tiny_llama(), None, tmp_path / "out", report={"run": 1})
    (out / "stale.txt").write_text("from the first run")
    with pytest.raises(PrunellmError, match="output directory already exists"):
        save_model(tiny_llama(), None, out, report={"run": 2})
    assert json.loads((out / "report.json").read_text()) == {"run": 1}

    save_model(tiny_gpt2(), None, out, report={"run": 2}, overwrite=True)
    assert json.loads((out / "report.json").read_text()) == {"run": 2}
    assert not (out / "stale.txt").exists()  # replaced, not merged
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert entries(tmp_path) == ["out"]  # neither staging nor the old copy left behind


@pytest.mark.parametrize("overwrite", [False, True])
def test_crash_while_writing_leaves_no_trace(
    overwrite: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    if overwrite:
        save_model(tiny_llama(), None, out, report={"run": 1})
    model = tiny_gpt2()

    def crash(directory, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, None, out, report={"run": 2}, overwrite=overwrite)
    if overwrite:  # the previous result is untouched
        assert entries(tmp_path) == ["out"]
        assert json.loads((out / "report.json").read_text()) == {"run": 1}
    else:
        assert entries(tmp_path) == []


def test_missing_parents_are_created(tmp_path: Path) -> None:
    out = save_model(tiny_llama(), None, tmp_path / "runs" / "a" / "out")
    assert (out / "config.json").is_file()


def test_gguf_marks_are_cleared_before_saving(tmp_path: Path, input_ids: torch.Tensor) -> None:
    # What from_pretrained(gguf_file=...) leaves on a dequantized model, without reading a GGUF.
    model = tiny_llama()
    quant_config = GgufConfig(dequantize=True)
    model.hf_quantizer = GgufHfQuantizer(quant_config)
    model.config.quantization_config = quant_config
    out = save_model(model, None, tmp_path / "out")
    assert model.hf_quantizer is None
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(logits_of(reloaded, input_ids), logits_of(model, input_ids))


def test_packed_gguf_weights_are_refused(tmp_path: Path) -> None:
    model = tiny_llama()
    model.hf_quantizer = GgufHfQuantizer(GgufConfig())
    model.hf_quantizer.packed_modules = {"model.layers.0.mlp.up_proj.weight": object()}
    with pytest.raises(PrunellmError, match="packed GGUF weights"):
        save_model(model, None, tmp_path / "out")
    assert entries(tmp_path) == []


def test_check_output_dir(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new" / "deeper", overwrite=False)  # creatable
    check_output_dir(tmp_path, overwrite=True)
    with pytest.raises(PrunellmError, match="already exists"):
        check_output_dir(tmp_path, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunellmError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(PrunellmError, match="is not a directory"):
        check_output_dir(tmp_path / "file" / "out", overwrite=False)


def test_check_output_dir_unwritable_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: permission bits cannot stop root, who runs the tests on some machines.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(PrunellmError, match=f"{tmp_path} is not writable"):
        check_output_dir(tmp_path / "out", overwrite=False)
    with pytest.raises(PrunellmError, match="is not writable"):
        check_output_dir(tmp_path / "runs" / "out", overwrite=False)  # nearest existing parent


def test_failed_final_rename_restores_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = save_model(tiny_llama(), None, tmp_path / "out", report={"run": 1})
    real_rename = os.rename

    def rename(src, dst):
        if ".out.tmp-" in str(src):  # the complete new result moving into place
            raise OSError("rename refused")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        save_model(tiny_gpt2(), None, out, report={"run": 2}, overwrite=True)
    assert entries(tmp_path) == ["out"]
    assert json.loads((out / "report.json").read_text()) == {"run": 1}

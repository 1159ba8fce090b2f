"""The real SmolLM2-135M GGUF: dequantized load, finite sensible logits, save and reload unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from prunellm.io import library_versions, load_model, save_model

from .conftest import logits_of

PROMPT = "The capital of France is"


def test_gguf_loads_as_plain_float_llama(smollm2) -> None:
    model, tokenizer = smollm2
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.float32 and not model.training
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    # The GGUF quantizer marks are gone, so save_pretrained accepts the model.
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    logits = logits_of(model, ids)
    assert torch.isfinite(logits).all()
    # Dequantization that garbled weights would still give finite logits, but not this answer.
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_save_and_reload_give_identical_logits(smollm2, tmp_path: Path) -> None:
    model, tokenizer = smollm2
    report = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "versions": library_versions()}
    out = save_model(model, tokenizer, tmp_path / "smollm2", report=report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]
    assert json.loads((out / "report.json").read_text()) == report
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys()  # tied: stored once

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert reloaded_tokenizer(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert torch.equal(logits_of(reloaded, ids), logits_of(model, ids))

    # And prunellm's own loader takes the saved directory back.
    again, _ = load_model(out)
    assert torch.equal(logits_of(again, ids), logits_of(model, ids))

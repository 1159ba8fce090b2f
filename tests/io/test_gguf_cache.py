"""The converted-GGUF cache: a load from the cached copy gives exactly the model and tokenizer the
conversion gave, and the cache never makes a load fail."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from prunellm.io import default_model_path, load_model
from prunellm.io import gguf_cache
from prunellm.io import load as load_module
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_model, word_tokenizer

TEXTS = ["The capital of France is", "  spaces,\ttabs and ünïcödé — 12345", "<|im_start|>user\nhi<|im_end|>\n"]


def test_a_load_from_the_cache_equals_the_conversion(smollm2_load, monkeypatch) -> None:
    if not smollm2_load["converted"]:
        pytest.skip("this run's first SmolLM2 load read the cache: nothing to compare it with")
    model, tokenizer = smollm2_load["model"], smollm2_load["tokenizer"]
    entry = gguf_cache.lookup(default_model_path())
    assert entry is not None and (entry / "config.json").is_file()

    sources = []
    real = load_module._from_pretrained
    monkeypatch.setattr(load_module, "_from_pretrained", lambda what, source, kwargs: (
        sources.append(source), real(what, source, kwargs))[1])
    cached, cached_tokenizer = load_model()
    assert [s.location for s in sources] == [entry, entry]  # model and tokenizer, neither from the GGUF

    assert type(cached) is type(model) and cached.dtype == model.dtype == torch.float32
    ours, theirs = model.state_dict(), cached.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    ids = torch.tensor([tokenizer(TEXTS[0]).input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, cached(ids).logits)
    for text in TEXTS:
        assert cached_tokenizer(text).input_ids == tokenizer(text).input_ids
        assert cached_tokenizer.decode(tokenizer(text).input_ids) == tokenizer.decode(tokenizer(text).input_ids)
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "chat_template"):
        assert getattr(cached_tokenizer, attribute) == getattr(tokenizer, attribute), attribute


def test_the_key_follows_the_file_and_the_cache_can_be_turned_off(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELLM_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    first = gguf_cache.entry_for(path)
    assert first is not None and first.parent == tmp_path / "cache" / "gguf"
    assert gguf_cache.entry_for(path) == first and gguf_cache.lookup(path) is None
    os.utime(path, ns=(1, 1))  # same bytes, another modification time: another entry
    assert gguf_cache.entry_for(path) != first
    monkeypatch.setattr(gguf_cache, "MAX_GGUF_BYTES", 10)
    assert gguf_cache.entry_for(path) is None  # too large to cache
    monkeypatch.setattr(gguf_cache, "MAX_GGUF_BYTES", 1 << 20)
    for off in ("off", "OFF", "0"):
        monkeypatch.setenv("PRUNELLM_CACHE_DIR", off)
        assert gguf_cache.cache_root() is None and gguf_cache.entry_for(path) is None
    monkeypatch.delenv("PRUNELLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "prunellm"


def test_an_entry_is_written_whole_and_a_failure_only_logs(tmp_path, monkeypatch, caplog) -> None:
    model, tokenizer = tiny_model("llama"), word_tokenizer(WORDS)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))

    monkeypatch.setenv("PRUNELLM_CACHE_DIR", str(tmp_path / "cache"))
    entry = gguf_cache.store(model, tokenizer, path)
    assert entry == gguf_cache.lookup(path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in entry.iterdir()}
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left beside it
    assert gguf_cache.store(model, tokenizer, path) == entry  # a second writer finds it there

    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("PRUNELLM_CACHE_DIR", str(tmp_path / "blocked"))
    with caplog.at_level(logging.WARNING, logger="prunellm.io.gguf_cache"):
        assert gguf_cache.store(model, tokenizer, path) is None
    assert "could not cache the converted m.gguf" in caplog.text

from types import SimpleNamespace

from transformers import Gemma3TextConfig, LlamaConfig

from prunellm.data import needs_bos


def test_gemma_family_needs_bos():
    for model_type in ("gemma", "gemma2", "gemma3", "gemma3_text"):
        assert needs_bos(SimpleNamespace(model_type=model_type))
    assert needs_bos(Gemma3TextConfig())


def test_others_do_not():
    assert not needs_bos(LlamaConfig())
    assert not needs_bos(SimpleNamespace(model_type="qwen2"))
    assert not needs_bos(object())  # no model_type at all

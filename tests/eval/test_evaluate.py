"""evaluate(): one perplexity per named text, each following load -> tokenize -> perplexity."""

import json
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prunellm.data import load_eval_text
from prunellm.errors import PrunellmError
from prunellm.eval import evaluate, perplexity, tokenize_eval_text


@pytest.fixture(scope="module")
def tiny_smollm_vocab_llama(smollm2_tokenizer):
    # Random, but with SmolLM2's vocabulary so that the real tokenizer's ids fit.
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def test_evaluate_named_and_local_texts(tiny_smollm_vocab_llama, smollm2_tokenizer, data_dir, tmp_path):
    local = tmp_path / "story.jsonl"
    local.write_text(json.dumps({"text": "Once upon a time " * 60}) + "\n")
    names = ["wikitext2", "ptb", str(local)]
    results = evaluate(
        tiny_smollm_vocab_llama, smollm2_tokenizer, names, seqlen=64, max_tokens=256, data_dir=data_dir, progress=False
    )
    assert list(results) == names
    for name in names:
        ids = tokenize_eval_text(load_eval_text(name, data_dir=data_dir), smollm2_tokenizer, 256)
        assert results[name] == perplexity(tiny_smollm_vocab_llama, ids, seqlen=64, progress=False)
    # An untrained model: perplexity of the order of its 49k vocabulary, and finite.
    assert all(1e3 < ppl < 1e6 for ppl in results.values())


def test_evaluate_missing_dataset_fails_clearly(tiny_smollm_vocab_llama, smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(PrunellmError, match="c4 validation split not available"):
        evaluate(tiny_smollm_vocab_llama, smollm2_tokenizer, ["c4"], data_dir=tmp_path, progress=False)

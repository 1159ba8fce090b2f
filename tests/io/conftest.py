"""Tiny causal LMs and a tokenizer built offline from configs, for fast save/load tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 256
_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a tiny model is saved and loaded again with the same logits",
]


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    # Fewer key/value heads than query heads: grouped-query attention, as in SmolLM2 and Llama 3.
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    # GPT-2 ties lm_head to the token embedding and uses Conv1D instead of nn.Linear.
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture
def tiny_llama_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    path = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 17, 42, 99, 200, 7, 3]])  # (B=1, T=8)


def logits_of(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits

"""Tiny random models of several architectures, built offline from configs."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig,
                          PhiConfig, Qwen2Config)

VOCAB = 128


def tiny_config(arch: str):
    common = dict(vocab_size=VOCAB)
    if arch == "llama":  # grouped-query attention: 4 heads share 2 key/value heads
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "gemma3":  # sliding-window and full-attention blocks: different masks and rotary tables
        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=16, sliding_window=8, max_position_embeddings=256,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"], **common)
    if arch == "opt":
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=64, max_position_embeddings=256, **common)
    if arch == "gpt2":  # Conv1D layers, weight stored (in, out)
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=256, **common)
    if arch == "phi":
        return PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, **common)
    raise ValueError(arch)


ARCHS = ["llama", "qwen2", "gemma3", "opt", "gpt2", "gpt_neox", "phi"]


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="eager")
    return model.eval()


def tokens(num: int = 4, length: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (num, length), generator=torch.Generator().manual_seed(seed))


def word_tokenizer(words: list[str], vocab_size: int = VOCAB):
    """A word-level tokenizer trained offline on `words`: enough for models built from configs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator([" ".join(words)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TEXT = " ".join(f"w{i} the quick brown fox jumps over the lazy dog, said {i}." for i in range(60))


def byte_bpe_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (the kind SmolLM2, Qwen2 and Llama 3 use), trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|endoftext|>")


def sentencepiece_bpe_tokenizer(vocab_size: int = 360):
    """A SentencePiece-style BPE tokenizer with byte fallback, laid out as Gemma's: <pad>, <eos>,
    <bos>, <unk>, the 256 <0xXX> byte tokens, then pieces spelled with "▁", BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials) - 256, show_progress=False)
    trained.train_from_iterator([TEXT], trainer=trainer)
    learned = json_model(trained)
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    vocab = {t: i for i, t in enumerate([*specials, *(f"<0x{b:02X}>" for b in range(256)), *pieces])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def json_model(backend) -> dict:
    import json

    return json.loads(backend.to_str())["model"]

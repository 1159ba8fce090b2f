"""prunellm: one-shot pruning and quantization of Hugging Face causal language models."""

__version__ = "0.1.0"

"""Perplexity under the papers' protocol (SparseGPT, Wanda, GPTQ)."""

from prunellm.eval.evaluate import evaluate
from prunellm.eval.perplexity import eval_windows, perplexity, tokenize_eval_text

__all__ = ["eval_windows", "evaluate", "perplexity", "tokenize_eval_text"]

"""Perplexity under the papers' protocol (SparseGPT, Wanda, GPTQ); zero-shot accuracy through
lm-evaluation-harness (`prunellm.eval.zero_shot`, which imports lm-eval only when used)."""

from prunellm.eval.evaluate import eval_token_ids, evaluate
from prunellm.eval.perplexity import eval_windows, perplexity, tokenize_eval_text
from prunellm.eval.zero_shot import TaskScore, TaskSuite, ZeroShotConfig

__all__ = ["TaskScore", "TaskSuite", "ZeroShotConfig", "eval_token_ids", "eval_windows", "evaluate", "perplexity",
           "tokenize_eval_text"]

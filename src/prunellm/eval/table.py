"""What `prunellm eval` prints and writes: the zero-shot table and the JSON record of a run."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from prunellm.eval.zero_shot import TaskScore, TaskSuite, lm_eval_version
from prunellm.io import library_versions


def format_scores(scores: dict[str, TaskScore]) -> str:
    """A plain-text table: task, metric, value, standard error, items scored."""
    rows = [("task", "metric", "value", "stderr", "items")]
    for task, score in scores.items():
        for metric, value in score.metrics.items():
            stderr = score.stderr.get(metric)
            rows.append((task, metric, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}",
                         "" if score.samples is None else str(score.samples)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    # Names left-aligned, numbers right-aligned.
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def eval_record(model_source: str, evaluation: Any, perplexity: dict[str, float], suite: TaskSuite | None,
                scores: dict[str, TaskScore]) -> dict[str, Any]:
    """Everything `prunellm eval` measured, with what it needs to be reproduced, as plain JSON."""
    record: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": model_source},
        "perplexity": {"values": perplexity, "seqlen": evaluation.seqlen, "max_tokens": evaluation.max_tokens}
        if perplexity else None,
        "zero_shot": None,
        "versions": {**library_versions(), "lm_eval": lm_eval_version()},
    }
    if suite is not None:
        config = suite.config
        record["zero_shot"] = {"tasks": list(config.tasks), "task_dirs": list(config.task_dirs),
                               "num_fewshot": config.num_fewshot, "limit": config.limit,
                               "scores": {task: dataclasses.asdict(score) for task, score in scores.items()}}
    return record

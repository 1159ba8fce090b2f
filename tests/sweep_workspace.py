"""A tiny model, its tokenizer and a calibration text on disk: what the sweep and report tests
run the real command line on, in seconds."""

from __future__ import annotations

import random
from pathlib import Path

from tests.tiny_models import tiny_model, word_tokenizer

WORDS = [f"w{i}" for i in range(120)]


def make_workspace(root: Path) -> dict[str, str]:
    rng = random.Random(0)
    text = root / "calib.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(200)))
    model_dir = root / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    word_tokenizer(WORDS).save_pretrained(model_dir)
    return {"root": str(root), "text": str(text), "model": str(model_dir)}


def sweep_args(ws: dict[str, str], out: Path, *extra: str) -> list[str]:
    """`prunellm sweep` on the tiny model: 4 windows of 32 tokens, perplexity on the same text."""
    return ["sweep", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--eval", ws["text"],
            "--out", str(out), "--quiet", *extra]

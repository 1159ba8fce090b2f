"""Tiny models saved as Hugging Face directories, a calibration text, the command lines that run
on them in seconds, and ways to compare outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.tiny_models import tiny_model, word_tokenizer

WORDS = [f"w{i}" for i in range(120)]


def calibration_text(root: Path) -> Path:
    rng = random.Random(0)
    path = root / "calib.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(200)))
    return path


def model_dir(root: Path, arch: str = "llama", name: str | None = None) -> Path:
    path = root / (name or arch)
    tiny_model(arch).save_pretrained(path)
    word_tokenizer(WORDS).save_pretrained(path)
    return path


def save_run(model: torch.nn.Module, dtype: torch.dtype, kind: str, out: Path, method: str = "sparsegpt") -> Path:
    """`model` saved as prunellm.load reads it: "dense" as a Hugging Face directory in `dtype`,
    "compressed" pruned to 50% by `method` and saved in prunellm's format with `dtype` values."""
    from prunellm.formats.compressed.checkpoint import save_compressed
    from prunellm.methods import build_method
    from prunellm.walker import WalkConfig, compress_model
    from tests.tiny_models import tokens

    tokenizer = word_tokenizer(WORDS)
    if kind == "dense":
        model.to(dtype).save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    result = compress_model(model, build_method(method, sparsity=0.5), tokens(),
                            WalkConfig(progress=False, layer_errors=False))
    path, _ = save_compressed(model, tokenizer, out, [r.name for r in result.layers],
                              dtype=str(dtype).removeprefix("torch."))
    return path


def make_workspace(root: Path) -> dict[str, str]:
    """A tiny Llama (`tiny-llama`) and a calibration text under `root`: what the sweep and report
    tests run the real command line on."""
    text, model = calibration_text(root), model_dir(root, "llama", "tiny-llama")
    return {"root": str(root), "text": str(text), "model": str(model)}


def prune_args(ws: dict[str, str], out: Path, *extra: str) -> list[str]:
    """`prunellm prune` on the tiny model: 4 windows of 32 tokens, quiet."""
    return ["prune", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--out", str(out),
            "--quiet", *extra]


def sweep_args(ws: dict[str, str], out: Path, *extra: str) -> list[str]:
    """`prunellm sweep` on the tiny model: 4 windows of 32 tokens, perplexity on the same text."""
    return ["sweep", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--eval", ws["text"],
            "--out", str(out), "--quiet", *extra]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved directory, whether in one file or in shards."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("model*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def report_without_timings(directory: Path) -> dict:
    """report.json without what differs between two runs of one command (clock times)."""
    report = json.loads((directory / "report.json").read_text())
    report.pop("created")
    report.pop("seconds")
    for layer in report["layers"]:
        layer.pop("seconds")
    report.get("streaming", {}).pop("resumed_from_block", None)
    return report

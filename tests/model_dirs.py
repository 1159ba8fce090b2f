"""Tiny models saved as Hugging Face directories, a calibration text, and ways to compare outputs."""

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

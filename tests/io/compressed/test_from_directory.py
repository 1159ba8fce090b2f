"""Exporting a saved prune to the compressed format one layer at a time gives the same file as
compressing the model in memory (tied embeddings, Conv1D and biases included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunellm.io import save_model
from prunellm.formats.compressed.checkpoint import read_compressed, save_compressed
from prunellm.formats.compressed.from_directory import export_compressed_lazily
from prunellm.methods import build_method
from prunellm.walker import WalkConfig, compress_model
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_model, tokens, word_tokenizer


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_lazy_export_equals_the_in_memory_one(arch: str, tmp_path: Path) -> None:
    model = tiny_model(arch)
    result = compress_model(model, build_method("sparsegpt", nm="2:4", bits=4, group_size=16), tokens(),
                            WalkConfig(progress=False, layer_errors=False))
    names = [r.name for r in result.layers]
    saved = save_model(model, word_tokenizer(WORDS), tmp_path / "hf", quant_grids=result.quant_grids)
    direct, _ = save_compressed(model, None, tmp_path / "direct", names, grids=result.quant_grids, nm=(2, 4))
    lazy, summary = export_compressed_lazily(saved, tmp_path / "lazy", names, grids=result.quant_grids, nm=(2, 4))
    a, b = read_compressed(direct), read_compressed(lazy)
    assert a.dtype == b.dtype == torch.float16
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.layers.keys() == b.layers.keys() == set(names)
    for name in names:
        assert a.layers[name].spec == b.layers[name].spec
        assert all(torch.equal(t, b.layers[name].tensors[p]) for p, t in a.layers[name].tensors.items())
    assert (lazy / "tokenizer.json").is_file() and summary.layers_bytes < summary.layers_fp16_bytes

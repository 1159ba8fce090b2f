"""A whole model in the compressed format: pruned and quantized for real, saved, loaded back by
`prunellm.load` with the same weights and logits, in every architecture's layer layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prunellm
from prunellm.errors import PrunellmError
from prunellm.formats.compressed.checkpoint import MANIFEST_FILE, TENSORS_FILE, read_compressed, save_compressed
from prunellm.formats.compressed.layer import decompress_weight
from prunellm.methods import build_method
from prunellm.runtime.linear import CompressedLinear
from prunellm.walker import WalkConfig, compress_model
from prunellm.layers import read_weight
from tests.tiny_models import tiny_model, tokens, word_tokenizer

QUIET = {"progress": False, "layer_errors": False}
SETTINGS = {
    "2:4 + 4-bit g16": ("sparsegpt", {"nm": "2:4", "bits": 4, "group_size": 16}, (2, 4)),
    "50% + 8-bit": ("sparsegpt", {"sparsity": 0.5, "bits": 8}, None),
    "60%": ("sparsegpt", {"sparsity": 0.6}, None),
    "gptq 3-bit g32 sym": ("gptq", {"bits": 3, "group_size": 32, "sym": True}, None),
}


def compressed_model(arch: str, setting: str):
    method_name, options, nm = SETTINGS[setting]
    model = tiny_model(arch)
    result = compress_model(model, build_method(method_name, **options), tokens(), WalkConfig(**QUIET))
    return model, result, nm


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])  # grouped-query; Conv1D and tied; biases
@pytest.mark.parametrize("setting", SETTINGS)
def test_save_and_load_give_the_same_weights_and_logits(arch: str, setting: str, tmp_path: Path) -> None:
    model, result, nm = compressed_model(arch, setting)
    names = [r.name for r in result.layers]
    out, summary = save_compressed(model, word_tokenizer([]), tmp_path / "c", names, grids=result.quant_grids, nm=nm,
                                   dtype="float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing left beside it
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == "float32" and set(manifest["layers"]) == set(names)
    checkpoint = read_compressed(out)
    for name in names:
        assert torch.equal(decompress_weight(checkpoint.layers[name]), read_weight(model.get_submodule(name))), name
    ids = tokens(2, 16, seed=5)
    expected = logits(model, ids)
    for keep in (False, True):
        loaded = prunellm.load(out, "cpu", keep_compressed=keep)
        loaded.set_attn_implementation(model.config._attn_implementation)  # the tiny model's is eager
        kinds = {type(loaded.get_submodule(name)) for name in names}
        assert kinds == ({CompressedLinear} if keep else {torch.nn.Linear})
        assert torch.equal(logits(loaded, ids), expected), keep
    assert summary.layers_bytes < summary.layers_fp16_bytes
    if "bits" in SETTINGS[setting][1]:
        assert summary.layers_bytes < 0.6 * summary.layers_fp16_bytes


def test_a_float32_model_is_stored_in_float16_by_default(tmp_path: Path) -> None:
    model, result, nm = compressed_model("llama", "60%")
    out, summary = save_compressed(model, None, tmp_path / "c", [r.name for r in result.layers], nm=nm)
    checkpoint = read_compressed(out)
    assert checkpoint.dtype == torch.float16
    assert all(t.dtype != torch.float32 for name, t in checkpoint.tensors.items() if t.is_floating_point())
    name = result.layers[0].name
    assert torch.equal(decompress_weight(checkpoint.layers[name]),
                       read_weight(model.get_submodule(name)).to(torch.float16))
    loaded = prunellm.load(out, "cpu")
    assert loaded.dtype == torch.float16
    assert loaded.model.embed_tokens.weight.data_ptr() == loaded.lm_head.weight.data_ptr() or \
        not model.config.tie_word_embeddings
    # the file is smaller than the float16 model, and the summary says so
    assert (out / TENSORS_FILE).stat().st_size == summary.file_bytes < summary.model_fp16_bytes


def test_tied_embeddings_are_stored_once_and_tied_again(tmp_path: Path) -> None:
    model, result, nm = compressed_model("gpt2", "60%")
    assert model.config.tie_word_embeddings
    out, _ = save_compressed(model, None, tmp_path / "c", [r.name for r in result.layers], dtype="float32")
    tensors = read_compressed(out).tensors
    assert ("lm_head.weight" in tensors) != ("transformer.wte.weight" in tensors)
    loaded = prunellm.load(out, "cpu")
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_8bit_codes_in_bfloat16_are_refused_before_writing(tmp_path: Path) -> None:
    model, result, nm = compressed_model("llama", "50% + 8-bit")
    with pytest.raises(PrunellmError, match="not exactly on its 8-bit grid"):
        save_compressed(model, None, tmp_path / "c", [r.name for r in result.layers], grids=result.quant_grids,
                        dtype="bfloat16")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_foreign_manifests_are_refused(tmp_path: Path) -> None:
    model, result, nm = compressed_model("llama", "60%")
    names = [r.name for r in result.layers]
    out, _ = save_compressed(model, None, tmp_path / "c", names)
    with pytest.raises(PrunellmError, match="already exists"):
        save_compressed(model, None, out, names)
    save_compressed(model, None, out, names, overwrite=True)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(PrunellmError, match="format version 99"):
        read_compressed(out)
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(PrunellmError, match="not a prunellm-compressed manifest"):
        prunellm.load(out, "cpu")
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / TENSORS_FILE).write_bytes(b"garbage")
    with pytest.raises(PrunellmError, match="cannot read"):
        prunellm.load(out, "cpu")

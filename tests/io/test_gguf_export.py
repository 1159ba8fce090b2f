"""GGUF export of the real SmolLM2: exact tensors, reused metadata, and transformers reads it back."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.io import default_model_path, load_model
from prunellm.formats.gguf.export import GGUFExportConfig, check_gguf_export, export_gguf
from prunellm.solvers.gguf_grids import fit_gguf_blocks
from prunellm.walker import find_blocks, find_linear_layers, read_weight, write_weight

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402


def block_layers(model, first: int = 0, last: int = 1) -> dict:
    blocks = find_blocks(model)
    layers = {}
    for index in range(first, last + 1):
        layers.update(find_linear_layers(blocks.modules[index], blocks.name(index)))
    return layers


@pytest.fixture(scope="module")
def pruned_smollm2(smollm2):
    """SmolLM2 with its first two blocks pruned to 50% by magnitude and put on q4_0 grids."""
    model = copy.deepcopy(smollm2[0])
    grids = {}
    for name, layer in block_layers(model).items():
        W = read_weight(layer)
        W = W * (W.abs() > W.abs().median())
        grids[name] = fit_gguf_blocks("q4_0", W, keep_zero=True)
        write_weight(layer, grids[name].round(W))
    return model, grids


@pytest.fixture(scope="module")
def source_reader():
    return gguf.GGUFReader(default_model_path())


@pytest.fixture(scope="module")
def exported(pruned_smollm2, tmp_path_factory):
    """The pruned model exported with its q4_0 grids (parsed once: the gguf package takes seconds)."""
    model, grids = pruned_smollm2
    out = export_gguf(model, grids, default_model_path(), tmp_path_factory.mktemp("gguf") / "smol.gguf",
                      GGUFExportConfig("q4_0"), {"general.quantized_by": "prunellm"})
    return out, gguf.GGUFReader(out)


@pytest.fixture(scope="module")
def exported_rounded(pruned_smollm2, tmp_path_factory):
    """The same model exported without its grids, onto q5_0, other tensors in f16."""
    model, grids = pruned_smollm2
    out = export_gguf(model, dict.fromkeys(grids), default_model_path(),
                      tmp_path_factory.mktemp("gguf") / "smol-q5_0.gguf", GGUFExportConfig("q5_0", other_type="f16"))
    return gguf.GGUFReader(out)


def tensors_by_name(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def test_export_packs_the_solver_weights_bit_for_bit(pruned_smollm2, exported, source_reader) -> None:
    model, grids = pruned_smollm2
    written, source = tensors_by_name(exported[1]), tensors_by_name(source_reader)
    assert list(written) == list(source)  # same tensors, same order
    # o_proj and the MLP keep their row order; q/k are permuted as llama.cpp's converter does,
    # which the reload test below checks.
    for hf, key in [("model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight"),
                    ("model.layers.1.self_attn.o_proj", "blk.1.attn_output.weight")]:
        tensor = written[key]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0
        values = dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(values, read_weight(dict(model.named_modules())[hf]).numpy())
    # Untouched tensors (later blocks, embeddings, norms) are the source's bytes.
    for key in ["blk.2.attn_q.weight", "token_embd.weight", "blk.0.attn_norm.weight"]:
        assert written[key].tensor_type == source[key].tensor_type
        assert np.array_equal(np.asarray(written[key].data), np.asarray(source[key].data))


def test_export_reuses_the_source_metadata_and_sets_the_file_type(exported, source_reader) -> None:
    fields = exported[1].fields
    source = source_reader.fields
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.block_count", "llama.rope.freq_base"]:
        assert fields[key].contents() == source[key].contents()
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert fields["general.quantized_by"].contents() == "prunellm"


def test_transformers_reads_the_export_back_as_the_same_model(pruned_smollm2, exported) -> None:
    model, grids = pruned_smollm2
    reloaded, _ = load_model(exported[0])
    for name, layer in block_layers(model).items():  # q and k included: the permutation is right
        assert torch.equal(read_weight(dict(reloaded.named_modules())[name]), read_weight(layer)), name
    ids = torch.arange(100, 164)[None]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_other_tensors_take_the_chosen_type(exported_rounded) -> None:
    written = tensors_by_name(exported_rounded)
    assert written["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert written["blk.5.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert written["blk.5.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay


def test_layers_without_a_grid_are_rounded_here_and_keep_their_zeros(pruned_smollm2, exported_rounded) -> None:
    model, _ = pruned_smollm2
    tensor = tensors_by_name(exported_rounded)["blk.0.ffn_up.weight"]
    values = dequantize(tensor.data, tensor.tensor_type)
    original = read_weight(dict(model.named_modules())["model.layers.0.mlp.up_proj"]).numpy()
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q5_0
    assert (values[original == 0] == 0).all()


def test_bad_exports_fail_before_writing(pruned_smollm2, smollm2, tmp_path) -> None:
    model, grids = pruned_smollm2
    target = tmp_path / "smol.gguf"
    with pytest.raises(PrunellmError, match="was quantized onto q4_0; it cannot be exported as q8_0"):
        export_gguf(model, grids, default_model_path(), target, GGUFExportConfig("q8_0"))
    with pytest.raises(PrunellmError, match="cannot keep its zeros"):
        export_gguf(model, dict.fromkeys(grids), default_model_path(), target, GGUFExportConfig("q4_k"))
    with pytest.raises(PrunellmError, match="cannot map layer 'model.nothing'"):
        check_gguf_export(model, ["model.nothing"], default_model_path(), GGUFExportConfig("q4_0"))
    with pytest.raises(PrunellmError, match="source GGUF not found"):
        check_gguf_export(model, list(grids), tmp_path / "missing.gguf", GGUFExportConfig("q4_0"))
    with pytest.raises(PrunellmError, match="unknown type 'q9'"):
        GGUFExportConfig("q4_0", other_type="q9")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_a_model_from_another_source_is_caught_by_the_layout_check(smollm2, tmp_path) -> None:
    model = copy.deepcopy(smollm2[0])
    layer = dict(model.named_modules())["model.layers.0.mlp.down_proj"]
    write_weight(layer, torch.randn_like(read_weight(layer)))
    with pytest.raises(PrunellmError, match="does not match GGUF tensor blk.0.ffn_down.weight"):
        export_gguf(model, {"model.layers.0.mlp.down_proj": None}, default_model_path(), tmp_path / "x.gguf",
                    GGUFExportConfig("q8_0"))
    layer = dict(model.named_modules())["model.layers.1.mlp.down_proj"]
    write_weight(layer, read_weight(dict(smollm2[0].named_modules())["model.layers.1.mlp.down_proj"]).flip(0))
    with pytest.raises(PrunellmError, match="does not match GGUF tensor blk.1.ffn_down.weight"):  # rows misplaced
        export_gguf(model, {"model.layers.1.mlp.down_proj": None}, default_model_path(), tmp_path / "x.gguf",
                    GGUFExportConfig("q8_0"))
    assert list(tmp_path.iterdir()) == []


def test_weights_moved_far_on_a_few_inputs_still_export(smollm2, tmp_path) -> None:
    # What GPTQ does with far fewer calibration tokens than inputs: the layout is right, a few
    # columns moved a long way (the cosine with the source drops near zero).
    model = copy.deepcopy(smollm2[0])
    layer = dict(model.named_modules())["model.layers.0.mlp.down_proj"]
    weight = read_weight(layer).clone()
    weight[:, :8] *= 1000.0
    write_weight(layer, weight)
    out = export_gguf(model, {"model.layers.0.mlp.down_proj": None}, default_model_path(), tmp_path / "x.gguf",
                      GGUFExportConfig("q8_0"))
    assert out.is_file()

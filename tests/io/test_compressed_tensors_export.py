"""compressed-tensors export: a tiny Llama quantized for real by prunellm, written pack-quantized,
loaded back by transformers with the same weights and logits; and what the format cannot hold
refused before anything is written."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.formats.compressed_tensors.export import (check_compressed_tensors, check_compressed_tensors_method,
                                                   export_directory_to_compressed_tensors, layer_codes,
                                                   save_compressed_tensors)
from prunellm.io.save import save_model
from prunellm.methods import build_method
from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize
from prunellm.walker import WalkConfig, compress_model, read_weight, write_weight
from tests.model_dirs import WORDS, weights
from tests.tiny_models import tiny_model, tokens, word_tokenizer

pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # noqa: E402
from transformers import AutoModelForCausalLM, CompressedTensorsConfig  # noqa: E402

# Asking for the dequantizing loader on a checkpoint that has its own quantization_config warns.
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
QUIET = {"progress": False, "layer_errors": False}
SETTINGS = {  # name: (method, options)
    "4-bit g32": ("gptq", {"bits": 4, "group_size": 32}),
    "4-bit g32 sym": ("gptq", {"bits": 4, "group_size": 32, "sym": True}),
    "8-bit per-row": ("gptq", {"bits": 8}),
    "8-bit per-row sym": ("gptq", {"bits": 8, "sym": True}),
    "4-bit per-row": ("gptq", {"bits": 4}),
    "50% + 4-bit g32": ("sparsegpt", {"sparsity": 0.5, "bits": 4, "group_size": 32}),
    "3-bit g32": ("gptq", {"bits": 3, "group_size": 32}),
}
DEQUANTIZE = {"quantization_config": CompressedTensorsConfig(dequantize=True)}


@dataclasses.dataclass
class Quantized:
    model: torch.nn.Module
    grids: dict[str, QuantGrid]
    report: dict


def make_report(method, result) -> dict:
    """The parts of `prunellm prune`'s report.json the exporter reads, as JSON gives them back."""
    report = {"method": method.describe(), "layers": [dataclasses.asdict(r) for r in result.layers]}
    return json.loads(json.dumps(report))


@functools.cache
def quantized(setting: str) -> Quantized:
    """The tiny Llama compressed with one setting (once per run; tests that change it copy it)."""
    method_name, options = SETTINGS[setting]
    model = tiny_model("llama")
    method = build_method(method_name, **options)
    result = compress_model(model, method, tokens(), WalkConfig(**QUIET))
    return Quantized(model, result.quant_grids, make_report(method, result))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens(2, 16, seed=5)).logits


def assert_reloads_as(out: Path, q: Quantized, **load) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(out, **load)
    expected = logits(q.model)
    torch.testing.assert_close(logits(reloaded), expected, rtol=1e-5, atol=1e-5)  # decompressed on the first forward
    for name in q.grids:
        assert torch.equal(reloaded.get_submodule(name).weight, read_weight(q.model.get_submodule(name))), name


def nothing_written(parent: Path) -> bool:
    return not any(parent.iterdir())


@pytest.mark.parametrize("setting", ["4-bit g32", "8-bit per-row"])
def test_asymmetric_grids_pack_exactly_and_reload(setting: str, tmp_path: Path) -> None:
    q = quantized(setting)
    before = {key: tensor.clone() for key, tensor in q.model.state_dict().items()}
    out = save_compressed_tensors(q.model, word_tokenizer(WORDS), q.grids, tmp_path / "ct", report=q.report)
    assert all(torch.equal(before[key], tensor) for key, tensor in q.model.state_dict().items())  # untouched
    bits, group_size = SETTINGS[setting][1]["bits"], SETTINGS[setting][1].get("group_size")

    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["ignore"] == ["lm_head"]  # every other Linear is quantized
    args = config["config_groups"]["group_0"]["weights"]
    assert args["num_bits"] == bits and args["symmetric"] is False and args["type"] == "int"
    assert (args["strategy"], args["group_size"]) == (("group", 32) if group_size else ("channel", None))
    assert json.loads((out / "report.json").read_text()) == q.report
    assert (out / "tokenizer.json").is_file()

    # The codes and zero points, unpacked by the package itself, are prunellm's less 2^(bits-1).
    tensors, offset = weights(out), 2 ** (bits - 1)
    for name, grid in q.grids.items():
        assert f"{name}.weight" not in tensors
        rows, cols = tensors[f"{name}.weight_shape"].tolist()
        codes = unpack_from_int32(tensors[f"{name}.weight_packed"], bits, (rows, cols)).to(torch.int16) + offset
        assert torch.equal(codes, layer_codes(grid, q.model.get_submodule(name).weight).to(torch.int16)), name
        zero = unpack_from_int32(tensors[f"{name}.weight_zero_point"], bits, grid.zero.shape, packed_dim=0)
        assert torch.equal(zero.float() + offset, grid.zero), name
        assert torch.equal(tensors[f"{name}.weight_scale"], grid.scale), name  # float32 model: float32 scales

    # transformers 5 with compressed-tensors 0.20 loads zero points only through its dequantizing
    # loader (its compressed loader leaves them unpacked on the meta device: see the module docs).
    assert_reloads_as(out, q, **DEQUANTIZE)


@pytest.mark.parametrize("setting", ["4-bit g32 sym", "8-bit per-row sym"])
@pytest.mark.parametrize("load", [{}, DEQUANTIZE], ids=["compressed", "dequantized"])
def test_symmetric_grids_store_no_zero_points_and_reload(setting: str, load: dict, tmp_path: Path) -> None:
    q = quantized(setting)
    out = save_compressed_tensors(q.model, None, q.grids, tmp_path / "ct")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["weights"]["symmetric"] is True
    assert not any(key.endswith("weight_zero_point") for key in weights(out))
    assert_reloads_as(out, q, **load)


def test_bfloat16_scales_move_weights_by_at_most_one_unit_in_the_last_place(tmp_path: Path) -> None:
    q = quantized("8-bit per-row")  # 8 bits: bf16 weights whose plain rounding finds the wrong code
    model = tiny_model("llama")
    model.load_state_dict(q.model.state_dict())
    model.to(torch.bfloat16)  # what a prune computing in bf16 writes: the float32 grid values, rounded
    out = save_compressed_tensors(model, None, q.grids, tmp_path / "ct")
    reloaded = AutoModelForCausalLM.from_pretrained(out, **DEQUANTIZE)
    assert reloaded.dtype == torch.bfloat16
    for name in q.grids:
        ours = model.get_submodule(name).weight
        # bf16 keeps 8 significant bits: one unit in the last place is at most 2^-7 of a value
        torch.testing.assert_close(reloaded.get_submodule(name).weight, ours, rtol=2**-7, atol=0)
    # A bf16 prune directory exports in bf16 too (load_model alone would load it as float32 on a CPU).
    saved = save_model(model, word_tokenizer(WORDS), tmp_path / "pruned", quant_grids=q.grids)
    exported = weights(export_directory_to_compressed_tensors(saved, tmp_path / "ct2"))
    assert exported["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.bfloat16
    assert exported["model.embed_tokens.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("setting", ["4-bit per-row", "4-bit g32", "8-bit per-row", "4-bit g32 sym"])
def test_plain_quantization_is_not_taken_for_sparsity(setting: str) -> None:
    q = quantized(setting)
    check_compressed_tensors(q.model, q.grids, list(q.grids))


def test_a_pruned_model_is_refused_from_its_weights_or_its_report(tmp_path: Path) -> None:
    q = quantized("50% + 4-bit g32")
    with pytest.raises(PrunellmError, match=r"layer model\.layers\.0\.\S+ looks pruned"):
        save_compressed_tensors(q.model, None, q.grids, tmp_path / "ct")
    with pytest.raises(PrunellmError, match="'sparsegpt' prunes"):
        save_compressed_tensors(q.model, None, q.grids, tmp_path / "ct", report=q.report)
    assert nothing_written(tmp_path)


def test_gptq_on_an_already_pruned_model_is_refused(tmp_path: Path) -> None:
    """GPTQ keeps earlier zeros: the report says only "gptq", the weights say pruned."""
    model = tiny_model("llama")
    compress_model(model, build_method("magnitude", sparsity=0.5), tokens(), WalkConfig(**QUIET))
    method = build_method("gptq", bits=4, group_size=32)
    result = compress_model(model, method, tokens(), WalkConfig(**QUIET))
    with pytest.raises(PrunellmError, match="looks pruned"):
        save_compressed_tensors(model, None, result.quant_grids, tmp_path / "ct", report=make_report(method, result))
    assert nothing_written(tmp_path)


def test_a_pruned_layer_without_a_grid_is_refused() -> None:
    q = quantized("4-bit g32")
    grids = dict(q.grids)
    name = "model.layers.1.mlp.down_proj"
    del grids[name]
    with pytest.raises(PrunellmError, match=rf"layer {name} was compressed but not quantized"):
        check_compressed_tensors(q.model, grids, list(q.grids))


def test_three_bits_are_refused_before_writing(tmp_path: Path) -> None:
    q = quantized("3-bit g32")
    with pytest.raises(PrunellmError, match=r"layer model\.layers\.0\.\S+ is quantized to 3 bits"):
        save_compressed_tensors(q.model, None, q.grids, tmp_path / "ct")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("method, refused", [
    ({"method": "gptq", "bits": 4, "group_size": 128}, None),
    ({"method": "sparsegpt", "sparsity": 0.0, "nm": None, "bits": 8}, None),
    ({"method": "gptq", "bits": 3}, "bits=3"),
    ({"method": "sparsegpt", "sparsity": 0.5, "nm": None, "bits": 4}, "prunes"),
    ({"method": "wanda", "sparsity": 0.0, "nm": "2:4", "bits": 4}, "prunes"),
    ({"method": "gptq", "bits": 4, "gguf": "q4_0"}, "GGUF"),
    ({"method": "sparsegpt", "sparsity": 0.0, "bits": 16}, "bits=16"),
])
def test_methods_are_judged_before_a_prune(method: dict, refused: str | None) -> None:
    if refused is None:
        check_compressed_tensors_method(method)
    else:
        with pytest.raises(PrunellmError, match=refused):
            check_compressed_tensors_method(method)


def test_layers_on_different_grids_are_refused() -> None:
    q = quantized("4-bit g32")
    model = tiny_model("llama")
    model.load_state_dict(q.model.state_dict())
    name = "model.layers.2.self_attn.o_proj"
    dense = read_weight(tiny_model("llama").get_submodule(name))  # (R, C) before GPTQ
    scale, zero = fit_minmax(dense, 8, False)  # (R,) each: round-to-nearest onto 8 bits per row
    write_weight(model.get_submodule(name), quantize(dense, scale[:, None], zero[:, None], 8))
    grids = {**q.grids, name: QuantGrid(8, False, None, scale[:, None], zero[:, None])}
    with pytest.raises(PrunellmError, match=rf"layer {name} is on a 8-bit per-row asym grid but \S+ on 4-bit g32"):
        check_compressed_tensors(model, grids, list(grids))


def test_a_weight_off_its_grid_is_refused() -> None:
    q = quantized("4-bit g32")
    model = tiny_model("llama")
    model.load_state_dict(q.model.state_dict())
    name = "model.layers.0.self_attn.q_proj"
    with torch.no_grad():
        model.get_submodule(name).weight[3, 5] += 1e-3
    with pytest.raises(PrunellmError, match=rf"layer {name}: its weight is not on its quantization grid"):
        check_compressed_tensors(model, q.grids, list(q.grids))


def test_only_linear_layers_are_packed() -> None:
    model = tiny_model("gpt2")  # Conv1D, weight stored (in, out)
    name = "transformer.h.0.attn.c_attn"
    scale, zero = fit_minmax(read_weight(model.get_submodule(name)), 4, False)
    with pytest.raises(PrunellmError, match=rf"layer {name} is a Conv1D"):
        check_compressed_tensors(model, {name: QuantGrid(4, False, None, scale[:, None], zero[:, None])}, [name])


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    q = quantized("4-bit g32 sym")
    out = tmp_path / "ct"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(PrunellmError, match="already exists"):
        save_compressed_tensors(q.model, None, q.grids, out)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    save_compressed_tensors(q.model, None, q.grids, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]  # no staging or moved-aside copy left
    (tmp_path / "file").write_text("")
    with pytest.raises(PrunellmError, match="not a directory"):
        save_compressed_tensors(q.model, None, q.grids, tmp_path / "file", overwrite=True)


def test_a_pruned_directory_exports_to_the_same_model(tmp_path: Path) -> None:
    q = quantized("4-bit g32")
    saved = save_model(q.model, word_tokenizer(WORDS), tmp_path / "pruned", report=q.report, quant_grids=q.grids)
    out = export_directory_to_compressed_tensors(saved, tmp_path / "ct")
    assert json.loads((out / "report.json").read_text()) == q.report
    assert_reloads_as(out, q, **DEQUANTIZE)
    with pytest.raises(PrunellmError, match="already exists"):
        export_directory_to_compressed_tensors(saved, out)


def test_a_directory_without_grids_is_refused(tmp_path: Path) -> None:
    saved = save_model(tiny_model("llama"), None, tmp_path / "dense")
    with pytest.raises(PrunellmError, match="no quantization grids"):
        export_directory_to_compressed_tensors(saved, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()

"""Outputs that load where users go: the format a run writes when none is named, the scheme
presets, and every format read back by `prunellm eval`, `prunellm.load` and (compressed-tensors)
transformers itself, on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prunellm
from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.formats import detect_format, load_model
from prunellm.formats.choice import default_format
from prunellm.methods import build_method, option_specs
from prunellm.methods.recommended import SHRINK_NOTE
from prunellm.methods.schemes import SCHEMES, with_scheme
from prunellm.pipeline import resolve_method
from tests.model_dirs import make_workspace, model_dir, weights
from tests.tiny_models import tokens

pytest.importorskip("compressed_tensors")

W4A16_TINY = ["--method", "gptq", "--scheme", "W4A16", "--group-size", "16"]  # the tiny model's 64 inputs: g16


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("outputs"))


def prune(ws: dict, out: Path, *extra: str) -> int:
    return main(["prune", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--quiet",
                 "--no-layer-errors", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def outputs(workspace, tmp_path_factory) -> dict[str, Path]:
    """One prune per kind of output, none naming --format, each evaluated on the calibration text."""
    root = tmp_path_factory.mktemp("runs")
    runs = {"gptq-4bit": ["--method", "gptq", "--bits", "4", "--group-size", "16"],  # asymmetric: the papers' grid
            "w4a16": W4A16_TINY,
            "2:4+4bit": ["--nm", "2:4", "--bits", "4", "--group-size", "16", "--refine", "none"],
            "50%+4bit": ["--sparsity", "0.5", "--bits", "4", "--group-size", "16", "--refine", "none"],
            "3bit": ["--method", "gptq", "--bits", "3", "--group-size", "16"],
            "sparse": ["--sparsity", "0.5", "--refine", "none"]}
    paths = {}
    for name, extra in runs.items():
        paths[name] = root / name
        assert prune(workspace, paths[name], *extra, "--eval", workspace["text"], "--no-dense-eval") == 0
    return paths


# -- the default format --------------------------------------------------------------------------

@pytest.mark.parametrize("method, kwargs, expected", [
    ({"method": "sparsegpt", "sparsity": 0.5, "bits": 16}, {}, "hf"),
    ({"method": "noop"}, {}, "hf"),
    ({"method": "gptq", "bits": 4}, {}, "compressed-tensors"),
    ({"method": "gptq", "bits": 8, "group_size": 128}, {}, "compressed-tensors"),
    ({"method": "sparsegpt", "sparsity": 0.0, "nm": None, "bits": 4}, {}, "compressed-tensors"),
    ({"method": "gptq", "bits": 3}, {}, "compressed"),
    ({"method": "sparsegpt", "sparsity": 0.5, "bits": 4}, {}, "compressed"),
    ({"method": "wanda", "sparsity": 0.0, "nm": (2, 4), "bits": 8}, {}, "compressed"),
    ({"method": "gptq", "bits": 4}, {"save_dtype": "float16"}, "compressed"),
    ({"method": "gptq", "bits": 4}, {"stream": True}, "hf"),
    ({"method": "gptq", "gguf": "q4_0"}, {"path": "out"}, "hf"),
    ({"method": "gptq", "gguf": "q4_0"}, {"path": "out.gguf"}, "gguf"),
])
def test_a_quantized_run_writes_a_packed_format_unless_told(method, kwargs, expected) -> None:
    choice = default_format(method, **kwargs)
    assert choice.name == expected and choice.by_default and choice.reason


@pytest.mark.parametrize("run, fmt", [("gptq-4bit", "compressed-tensors"), ("w4a16", "compressed-tensors"),
                                      ("2:4+4bit", "compressed"), ("50%+4bit", "compressed"), ("3bit", "compressed"),
                                      ("sparse", "hf")])
def test_the_cli_writes_the_default_format(outputs, run, fmt) -> None:
    assert detect_format(outputs[run]).name == fmt


def test_the_last_lines_say_the_format_and_how_to_load_it(workspace, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert prune(workspace, tmp_path / "asym", "--method", "gptq", "--bits", "4", "--group-size", "16") == 0
    saved, chosen, load = capsys.readouterr().out.strip().splitlines()[-3:]
    assert saved.startswith(f"saved to {tmp_path / 'asym'}") and "compressed-tensors" in saved
    assert chosen.startswith("format: compressed-tensors (quantized only") and "--format" in chosen
    assert "vllm serve" in load and "CompressedTensorsConfig(dequantize=True)" in load and "--scheme W4A16" in load
    assert prune(workspace, tmp_path / "sym", *W4A16_TINY) == 0
    load = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"from_pretrained('{tmp_path / 'sym'}') (runs it packed)" in load and "dequantize" not in load
    assert prune(workspace, tmp_path / "named", "--method", "gptq", "--bits", "4", "--format", "compressed") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not any(line.startswith("format:") for line in lines)  # asked for: nothing to explain
    assert lines[-1].startswith("load: prunellm.load(")


def test_an_explicit_format_still_writes_dense_weights(workspace, tmp_path) -> None:
    out = tmp_path / "hf"
    assert prune(workspace, out, "--method", "gptq", "--bits", "4", "--format", "hf") == 0
    assert detect_format(out).name == "hf" and (out / "quant_grids.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_conv1d_layers_fall_back_to_the_compressed_format_before_compressing(workspace, tmp_path, capsys) -> None:
    gpt2 = model_dir(tmp_path, "gpt2")
    common = ["prune", str(gpt2), "--calib", workspace["text"], "--num-samples", "4", "--seqlen", "32", "--quiet",
              "--no-layer-errors", "--method", "gptq", "--bits", "4", "--group-size", "16"]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert detect_format(tmp_path / "auto").name == "compressed"
    assert "compressed-tensors cannot hold this model" in capsys.readouterr().out
    # Named by the user: refused once the model is loaded, before any compression, nothing written.
    assert main([*common, "--format", "compressed-tensors", "--out", str(tmp_path / "named")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Conv1D" in err and len(err.splitlines()) == 1 and not (tmp_path / "named").exists()


# -- schemes -------------------------------------------------------------------------------------

def test_schemes_are_compressed_tensors_presets() -> None:
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    for name, preset in SCHEMES.items():
        weights = PRESET_SCHEMES[name]["weights"]
        assert "input_activations" not in PRESET_SCHEMES[name]  # weight-only, as prunellm quantizes
        assert (preset["bits"], preset["group_size"], preset["sym"]) == (weights.num_bits, weights.group_size,
                                                                         weights.symmetric)
        assert preset["act_order"] is True


def test_explicit_options_win_over_a_scheme() -> None:
    takes = {name for name, spec in option_specs().items() if "gptq" in spec.defaults}
    assert with_scheme("w4a16", {}, takes) == {"bits": 4, "group_size": 128, "sym": True, "act_order": True}
    options = with_scheme("W4A16", {"group_size": 64, "sym": False}, takes)
    assert options == {"bits": 4, "group_size": 64, "sym": False, "act_order": True}
    method, _, _ = resolve_method("gptq", {"act_order": False}, scheme="W8A16")
    described = method.describe()
    assert (described["bits"], described["group_size"], described["sym"], described["act_order"]) == (8, 128, True,
                                                                                                      False)
    # SparseGPT's joint sweep has no activation order: it takes the grid alone.
    method, _, note = resolve_method("sparsegpt", {"sparsity": 0.5}, scheme="W4A16")
    assert (method.config.bits, method.config.group_size, method.config.sym) == (4, 128, True)
    assert method.config.refine == "none" and note is None  # a quantized run keeps the plain method
    # Without a scheme, the papers' grid: per row, asymmetric.
    method = build_method("gptq", bits=4)
    assert (method.config.group_size, method.config.sym) == (None, False)


@pytest.mark.parametrize("name, options, scheme, message", [
    ("gptq", {}, "W3A16", "unknown scheme 'W3A16'"),
    ("gptq", {"gguf": "q4_0"}, "W4A16", "both choose the grid"),
    ("noop", {}, "W4A16", "does not take bits"),
    ("nosuch", {}, "W4A16", "unknown method 'nosuch'"),
])
def test_bad_schemes_are_refused(name, options, scheme, message) -> None:
    with pytest.raises(PrunellmError, match=message):
        resolve_method(name, options, scheme=scheme)


def test_the_scheme_is_recorded_and_the_grid_is_the_presets(outputs) -> None:
    report = json.loads((outputs["w4a16"] / "report.json").read_text())
    assert report["scheme"] == "W4A16"
    assert {k: report["method"][k] for k in ("bits", "group_size", "sym", "act_order")} == \
        {"bits": 4, "group_size": 16, "sym": True, "act_order": True}
    config = json.loads((outputs["w4a16"] / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["symmetric"], weights["group_size"]) == (4, True, 16)
    asym = json.loads((outputs["gptq-4bit"] / "report.json").read_text())
    # --group-size given: the user's grid; the one default filled in is GPTQ's Hessian shrinkage
    assert "scheme" not in asym and asym["recommended_defaults"] == f"recommended defaults: {SHRINK_NOTE}"


# -- reading every format back -------------------------------------------------------------------

def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens(2, 16, seed=3)).logits


def test_transformers_runs_a_symmetric_export_packed_as_prunellm_evaluates_it(outputs) -> None:
    from transformers import AutoModelForCausalLM

    path = outputs["w4a16"]
    loaded = AutoModelForCausalLM.from_pretrained(path)  # no quantization_config: the file's own, run compressed
    layer = loaded.get_submodule("model.layers.0.self_attn.q_proj")
    parameters = dict(layer.named_parameters())
    assert "weight_packed" in parameters and "weight" not in parameters  # held packed, not dequantized at load
    assert parameters["weight_packed"].dtype == torch.int32
    reference, _ = load_model(path)  # what `prunellm eval` scores
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=1e-5, atol=1e-5)


def test_transformers_cannot_run_an_asymmetric_export_packed_but_prunellm_reads_it(outputs) -> None:
    from transformers import AutoModelForCausalLM

    path = outputs["gptq-4bit"]
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["weights"]["symmetric"] is False
    # compressed-tensors 0.20's compressed loader cannot build zero points (export.py's docstring):
    # if a later version can, the CLI's load line and README should say so.
    with pytest.raises(Exception):  # noqa: B017 (a size mismatch today, whatever transformers raises)
        logits(AutoModelForCausalLM.from_pretrained(path))
    model = prunellm.load(path, "cpu")
    reference, _ = load_model(path)
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)


@pytest.mark.parametrize("run", ["gptq-4bit", "w4a16", "2:4+4bit", "50%+4bit", "3bit", "sparse"])
def test_eval_and_load_read_every_default_output(outputs, workspace, run, tmp_path) -> None:
    # The prune rounds to the stored values before evaluating: the file scores what was reported.
    path, text = outputs[run], workspace["text"]
    reported = json.loads((path / "report.json").read_text())["perplexity"]["compressed"][text]
    out = tmp_path / "eval.json"
    assert main(["eval", str(path), "--datasets", text, "--seqlen", "32", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["perplexity"]["values"][text] == pytest.approx(reported, rel=1e-4)
    model = prunellm.load(path, "cpu")  # in the stored dtype (float16 for the compressed format), kernels on
    stored = str(next(model.parameters()).dtype).removeprefix("torch.")
    reference, _ = load_model(path, dtype=stored)  # the same weights, every layer dense
    torch.testing.assert_close(logits(model), logits(reference), rtol=1e-3, atol=1e-3)


def test_load_reads_a_gguf_file() -> None:
    from prunellm.io import default_model_path

    try:
        path = default_model_path()
    except PrunellmError as error:
        pytest.skip(str(error))
    model = prunellm.load(path, "cpu")
    assert not model.training and detect_format(path).name == "gguf"
    reference, _ = load_model(path)
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(model.get_submodule(name).weight, reference.get_submodule(name).weight)
    with pytest.raises(PrunellmError, match="not a model directory or .gguf file"):
        prunellm.load(f"{path}.missing", "cpu")


def test_a_scheme_whose_groups_do_not_divide_a_layer_is_refused_in_one_line(workspace, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert prune(workspace, tmp_path / "out", "--method", "gptq", "--scheme", "W4A16") == 2  # 64 inputs, groups of 128
    err = capsys.readouterr().err.strip()
    assert "group_size 128 does not divide" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -- the recommended grid: W4A16's unless the user chose one -------------------------------------

def wide_llama(root: Path, hidden: int) -> Path:
    """A tiny Llama `hidden` wide (MLP twice that): 192 is 1.5 groups of 128, as SmolLM2's 576 is 4.5."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.model_dirs import WORDS
    from tests.tiny_models import VOCAB, word_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, vocab_size=VOCAB)
    path = root / f"llama-{hidden}"
    LlamaForCausalLM(config).save_pretrained(path)
    word_tokenizer(WORDS).save_pretrained(path)
    return path


def grid_of(path: Path) -> tuple[int, bool, int | None]:
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    return weights["num_bits"], weights["symmetric"], weights["group_size"]


def assert_runs_packed(path: Path) -> None:
    """What test_transformers_runs_a_symmetric_export_packed_as_prunellm_evaluates_it checks."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path)
    parameters = dict(loaded.get_submodule("model.layers.0.self_attn.q_proj").named_parameters())
    assert "weight_packed" in parameters and "weight" not in parameters
    reference, _ = load_model(path)
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden, group", [(None, 64), (192, 64), (256, 128)])  # None: the tiny Llama, 64 wide
def test_a_4_bit_run_writes_the_w4a16_grid_with_groups_that_divide_the_model(workspace, tmp_path, capsys, hidden,
                                                                             group) -> None:
    ws = workspace if hidden is None else {**workspace, "model": str(wide_llama(tmp_path, hidden))}
    capsys.readouterr()
    out = tmp_path / "gptq"
    assert prune(ws, out, "--method", "gptq", "--bits", "4") == 0
    printed = capsys.readouterr().out
    assert detect_format(out).name == "compressed-tensors" and grid_of(out) == (4, True, group)
    report = json.loads((out / "report.json").read_text())
    assert {k: report["method"][k] for k in ("group_size", "sym", "act_order")} == \
        {"group_size": group, "sym": True, "act_order": True}
    # What was filled in is printed (fitted to the model once loaded) and recorded.
    note = report["recommended_defaults"]
    assert note in printed and f"--sym --act-order --group-size {group} (W4A16" in note and "--defaults paper" in note
    assert ("128 does not divide" in note) == (group != 128)
    assert report["settings"]["options"]["group_size"] == group  # a replay builds this grid, whatever the defaults
    assert_runs_packed(out)


def test_the_fitted_grid_replays_to_the_same_weights(workspace, tmp_path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert prune(workspace, first, "--method", "gptq", "--bits", "4") == 0
    capsys.readouterr()
    assert main(["prune", "--recipe", str(first), "--out", str(second), "--quiet"]) == 0
    assert "recommended defaults" not in capsys.readouterr().out  # every grid option written out: nothing to fill
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_defaults_paper_keeps_the_papers_per_row_asymmetric_grid(workspace, tmp_path, capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "paper"
    assert prune(workspace, out, "--method", "gptq", "--bits", "4", "--defaults", "paper") == 0
    assert "recommended defaults" not in capsys.readouterr().out
    assert grid_of(out) == (4, False, None)  # per row ("channel"), zero points
    report = json.loads((out / "report.json").read_text())
    assert report["defaults"] == "paper" and "recommended_defaults" not in report
    assert (report["method"]["group_size"], report["method"]["sym"]) == (None, False)


def test_a_streamed_run_fits_the_grid_to_the_model_too(workspace, tmp_path) -> None:
    out = tmp_path / "stream"
    assert prune(workspace, out, "--method", "wanda", "--sparsity", "0.5", "--bits", "8", "--stream") == 0
    report = json.loads((out / "report.json").read_text())
    assert {k: report["method"][k] for k in ("bits", "group_size", "sym", "act_order")} == \
        {"bits": 8, "group_size": 64, "sym": True, "act_order": True}
    assert "W8A16" in report["recommended_defaults"]


@pytest.mark.parametrize("options, grid", [
    ({"bits": 4, "sym": True}, (None, True, True)),  # one grid option given: the rest keep the method's own
    ({"bits": 4, "group_size": 32}, (32, False, True)),
    ({"bits": 4, "act_order": False}, (None, False, False)),
    ({"bits": 3}, (None, False, True)),  # other widths: the papers' grid
])
def test_explicit_grid_options_win(options, grid) -> None:
    shrink_only = f"recommended defaults: {SHRINK_NOTE}"  # the grid is the user's; GPTQ's shrinkage is filled in
    method, _, note = resolve_method("gptq", options)
    assert (method.config.group_size, method.config.sym, method.config.act_order) == grid and note == shrink_only
    method, _, note = resolve_method("gptq", {"bits": 4}, scheme="W4A16", layer_inputs={"q": 64})
    assert method.config.group_size == 128 and note == shrink_only  # a scheme named is taken as it is (and refused there)

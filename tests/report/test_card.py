"""Model cards: every output directory gets a README.md the hub reads (front matter with
base_model, library_name, tags) with the method and its settings, the calibration data, the
evaluation table when the run evaluated, how to load it and the command that made it."""

import json

import pytest

from prunellm.cli import main
from prunellm.io.default_model import DEFAULT_MODEL_LABEL
from prunellm.report.card import CARD_FILE, base_model, model_card
from prunellm.report.format import perplexity
from tests.model_dirs import make_workspace, sweep_args, prune_args as base_prune_args

yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("card"))


def prune_args(ws: dict, out, *extra: str) -> list[str]:
    return base_prune_args(ws, out, "--no-layer-errors", *extra)


def read_card(directory) -> tuple[dict, str]:
    """(front matter, body) of a directory's README.md."""
    text = (directory / CARD_FILE).read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_a_pruned_directory_has_a_card_with_its_settings_and_evaluation(workspace, tmp_path):
    out = tmp_path / "pruned"
    args = prune_args(workspace, out, "--sparsity", "0.5", "--refine", "none", "--eval", workspace["text"])
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    meta, body = read_card(out)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["prunellm", "sparsegpt", "pruned"]
    assert "base_model" not in meta  # a local directory is no hub model
    assert "sparsegpt (sparsity=0.5" in body  # the method and its settings
    assert f"4 windows of 32 tokens from {workspace['text']}, seed 0" in body  # the calibration data
    dense, compressed = (report["perplexity"][k][workspace["text"]] for k in ("dense", "compressed"))
    assert f"| {perplexity(dense)} | {perplexity(compressed)} |" in body  # the evaluation table
    assert 'AutoModelForCausalLM.from_pretrained("pruned")' in body
    assert "prunellm " + " ".join(args) in body and "--recipe report.json" in body


def test_compressed_formats_and_exports_have_cards(workspace, tmp_path):
    saved, packed, exported = tmp_path / "hf", tmp_path / "packed", tmp_path / "exported"
    quantized = ["--nm", "2:4", "--bits", "4", "--group-size", "16", "--refine", "none"]
    assert main(prune_args(workspace, saved, *quantized, "--format", "hf")) == 0
    assert main(prune_args(workspace, packed, *quantized)) == 0  # the default for sparse + quantized
    assert main(["export", str(saved), "--to", "compressed", "--out", str(exported), "--quiet"]) == 0
    for directory in (packed, exported):
        meta, body = read_card(directory)
        assert meta["library_name"] == "prunellm"
        assert {"pruned", "n:m-sparsity", "quantized", "compressed"} <= set(meta["tags"])
        assert f'prunellm.load("{directory.name}")' in body and "## Evaluation" not in body  # nothing evaluated


def test_a_compressed_tensors_directory_has_a_card(workspace, tmp_path):
    pytest.importorskip("compressed_tensors")
    out = tmp_path / "ct"
    assert main(prune_args(workspace, out, "--method", "gptq", "--bits", "4", "--group-size", "16",
                           "--format", "compressed-tensors")) == 0
    meta, body = read_card(out)
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["prunellm", "gptq", "quantized", "compressed-tensors"]
    assert "gptq (bits=4, group_size=16" in body


def test_a_sweeps_saved_models_have_cards(workspace, tmp_path):
    out = tmp_path / "sweep"
    assert main(sweep_args(workspace, out, "--methods", "magnitude,wanda", "--sparsities", "0.5",
                           "--save-models")) == 0
    saved = sorted(out.glob("models/*/"))
    assert len(saved) == 2
    for directory in saved:
        report = json.loads((directory / "report.json").read_text())
        meta, body = read_card(directory)
        assert meta["tags"][:2] == ["prunellm", report["method"]["method"]] and "## Evaluation" in body


def test_base_model_names_only_hub_models(tmp_path):
    assert base_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert base_model(DEFAULT_MODEL_LABEL) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    for local in (str(tmp_path / "model.gguf"), "./models/x", str(tmp_path / "org" / "model")):
        assert base_model(local) is None, local
    report = {"model": {"source": "meta-llama/Llama-3.2-1B"}, "method": {"method": "wanda", "sparsity": 0.5}}
    meta = yaml.safe_load(model_card(report, "hf", tmp_path / "out").split("---\n")[1])
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B"

"""The formats table: every format behind the same interface, found by name or by what a path
holds, and read back by `prunellm eval` / `formats.load_model` whatever wrote it."""

import json
from pathlib import Path

import pytest
import torch

from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.formats import OutputFormat, detect_format, format_names, get_format, load_model
from tests.model_dirs import make_workspace

GPTQ_4 = ["--method", "gptq", "--bits", "4", "--group-size", "16", "--sym"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama pruned once per format prunellm writes from a Hugging Face source."""
    root = tmp_path_factory.mktemp("formats")
    ws = make_workspace(root)
    common = ["--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--quiet", "--no-layer-errors",
              "--eval", ws["text"], "--no-dense-eval"]
    runs = {"hf": ["--nm", "2:4", "--refine", "none"],
            "compressed": ["--nm", "2:4", "--refine", "none", "--format", "compressed"],
            "compressed-tensors": [*GPTQ_4, "--format", "compressed-tensors"]}
    paths = {"text": Path(ws["text"])}
    for name, extra in runs.items():
        paths[name] = root / name
        assert main(["prune", ws["model"], *common, *extra, "--out", str(paths[name])]) == 0
    return paths


def test_the_table_names_every_format_once_behind_one_interface() -> None:
    assert format_names() == ("hf", "compressed", "compressed-tensors", "gguf")
    for name in format_names():
        fmt = get_format(name)
        assert isinstance(fmt, OutputFormat) and fmt.name == name and fmt.summary
        assert get_format(name) is fmt  # one instance per format
    with pytest.raises(PrunellmError, match="unknown format 'onnx'"):
        get_format("onnx")


def test_each_output_is_detected_as_the_format_that_wrote_it(outputs, tmp_path) -> None:
    for name in ("hf", "compressed", "compressed-tensors"):
        assert detect_format(outputs[name]).name == name
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert detect_format(gguf).name == "gguf"
    assert detect_format(tmp_path / "missing") is None
    assert detect_format(outputs["text"]) is None  # a text file is none of ours


@pytest.mark.parametrize("name", ["hf", "compressed", "compressed-tensors"])
def test_eval_reads_every_format_and_scores_what_the_prune_reported(outputs, name, tmp_path) -> None:
    # The prune rounds to the stored values before evaluating, so the file scores the same.
    reported = json.loads((outputs[name] / "report.json").read_text())["perplexity"]["compressed"]
    out = tmp_path / "eval.json"
    text = str(outputs["text"])
    assert main(["eval", str(outputs[name]), "--datasets", text, "--seqlen", "32", "--quiet", "--out", str(out)]) == 0
    measured = json.loads(out.read_text())["perplexity"]["values"][text]
    assert measured == pytest.approx(reported[text], rel=1e-4)


def test_load_model_gives_dense_layers_and_the_tokenizer(outputs) -> None:
    model, tokenizer = load_model(outputs["compressed"])
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, torch.nn.Linear) and layer.weight.dtype == torch.float32  # computed in float32 on CPU
    groups = layer.weight.reshape(layer.weight.shape[0], -1, 4)
    assert bool(((groups == 0).sum(-1) >= 2).all())  # 2:4 kept
    assert tokenizer("w1 w2")["input_ids"]

"""The command line end to end on a tiny model, and every kind of bad input it must refuse."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from prunellm.cli import main
from prunellm.methods.recommended import recommended
from tests.model_dirs import WORDS, make_workspace, prune_args
from tests.tiny_models import tiny_model, word_tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    nan_dir = root / "nan-llama"
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(nan_dir)
    word_tokenizer(WORDS).save_pretrained(nan_dir)
    return {**make_workspace(root), "root": root, "nan": str(nan_dir)}



def test_prune_saves_a_loadable_model_and_report(workspace, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(prune_args(workspace, out, "--method", "sparsegpt", "--sparsity", "0.5", "--eval", workspace["text"],
                           "--refine", "none", "--allocation", "uniform"))  # the paper's method
    assert code == 0
    printed = capsys.readouterr().out
    assert "perplexity: dense" in printed and "saved to" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["method"] == "sparsegpt" and report["method"]["sparsity"] == 0.5
    assert report["calibration"]["num_samples"] == 4 and report["seed"] == 0
    assert len(report["layers"]) == 21 and all(0 <= layer["relative_error"] < 1 for layer in report["layers"])
    assert set(report["perplexity"]["dense"]) == set(report["perplexity"]["compressed"]) == {workspace["text"]}
    assert "torch" in report["versions"]
    weights = load_file(out / "model.safetensors")
    down = weights["model.layers.2.mlp.down_proj.weight"]
    assert 0.5 <= (down == 0).float().mean() <= 0.52
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(reloaded.model.layers[2].mlp.down_proj.weight, down)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary leftovers


def test_the_perplexity_reported_is_that_of_the_file_saved_in_the_sources_dtype(workspace, tmp_path, capsys):
    # The prune computes in float32 on CPU and saves in the source's bfloat16: the weights are
    # rounded before the evaluation, so report.json scores what `prunellm eval` reads back.
    source = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(workspace["model"]).to(torch.bfloat16).save_pretrained(source)
    word_tokenizer(WORDS).save_pretrained(source)
    out = tmp_path / "pruned"
    args = prune_args({**workspace, "model": str(source)}, out, "--sparsity", "0.5", "--refine", "none",
                      "--eval", workspace["text"], "--no-dense-eval")
    assert main(args) == 0
    assert "(bfloat16)" in capsys.readouterr().out
    # the same tensors in the same dtype as the source: its size, not twice it
    assert (out / "model.safetensors").stat().st_size <= 1.01 * (source / "model.safetensors").stat().st_size
    reported = json.loads((out / "report.json").read_text())["perplexity"]["compressed"][workspace["text"]]
    assert main(["eval", str(out), "--datasets", workspace["text"], "--seqlen", "32", "--quiet",
                 "--out", str(tmp_path / "eval.json")]) == 0
    measured = json.loads((tmp_path / "eval.json").read_text())["perplexity"]["values"][workspace["text"]]
    assert measured == pytest.approx(reported, rel=1e-6)


@pytest.mark.parametrize("target", [["--sparsity", "0.7"], ["--nm", "2:4"]])
def test_prune_without_refine_or_allocation_takes_the_tables_choice(workspace, tmp_path, capsys, target):
    out = tmp_path / "pruned"
    assert main(prune_args(workspace, out, *target)) == 0
    choice = recommended("sparsegpt", {"sparsity": 0.7} if target[0] == "--sparsity" else {"nm": "2:4"})
    assert "recommended defaults: --refine alps" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["refine"] == choice.refine and report["allocation"]["kind"] == choice.allocation
    # OWL moves sparsity between blocks, never the budget: 70% of the compressed weights overall.
    expected = 0.7 if target[0] == "--sparsity" else 0.5
    assert report["sparsity"]["compressed_layers"] == pytest.approx(expected, abs=0.01)


def test_eval_command(workspace, capsys):
    assert main(["eval", workspace["model"], "--datasets", workspace["text"], "--seqlen", "32", "--quiet"]) == 0
    assert "perplexity:" in capsys.readouterr().out


BAD = {
    "sparsity too high": (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    "negative sparsity": (["--sparsity", "-0.2"], "sparsity must be in [0, 1)"),
    "n >= m": (["--nm", "4:4"], "0 < n < m"),
    "m does not divide": (["--nm", "2:3"], "not divisible by m=3"),
    "bits too low": (["--bits", "1"], "bits must be between 2 and 8"),
    "bits too high": (["--method", "gptq", "--bits", "9"], "bits must be between 2 and 8"),
    "group does not divide": (["--bits", "4", "--group-size", "48"], "group_size 48 does not divide"),
    "shrinkage out of range": (["--method", "gptq", "--hessian-shrink", "1.5"],
                               "hessian_shrink must be in [0, 1] or 'auto', got 1.5"),
    "unknown method": (["--method", "obs"], "unknown method 'obs'"),
    "option the method lacks": (["--method", "gptq", "--sparsity", "0.5"], "does not take sparsity"),
    "unknown dataset": (["--calib", "wikitext9"], "wikitext9"),
    "unknown eval dataset": (["--eval", "wikitext9"], "wikitext9"),
    "text shorter than a window": (["--seqlen", "100000"], "too few"),
    "group a GGUF type cannot hold": (["--method", "gptq", "--gguf-type", "q4_0", "--group-size", "128"],
                                      "q4_0 stores one scale per 32 inputs; group_size 128 cannot be held"),
    "sparse K-quant": (["--gguf-type", "q4_k", "--sparsity", "0.5"], "q4_k cannot keep pruned weights at exactly zero"),
    "unknown GGUF type": (["--method", "gptq", "--gguf-type", "q3_x"], "unknown GGUF type 'q3_x'"),
    "GGUF output from a model whose tokenizer GGUF cannot hold": (
        ["--method", "gptq", "--gguf-type", "q4_0", "--format", "gguf"], "this one is WordLevel"),
    "GGUF output without a type": (["--format", "gguf"], "--format gguf needs --gguf-type"),
    "float GGUF type without GGUF output": (["--gguf-type", "f16"], "only applies with --format gguf"),
    "unknown device": (["--device", "gpu"], "unknown device 'gpu': use cpu, cuda or cuda:N"),
    "block range past the model": (["--last-block", "3"], "block range 0..3 is outside the model's 3 blocks"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_writes_nothing(workspace, tmp_path, capsys, case):
    extra, message = BAD[case]
    out = tmp_path / "out"
    code = main(prune_args(workspace, out, *extra))
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model,message", [("missing", "model path not found"), ("nan", "NaN")])
def test_bad_models_are_refused(workspace, tmp_path, capsys, model, message):
    source = str(workspace["root"] / "no-such-model") if model == "missing" else workspace["nan"]
    out = tmp_path / "out"
    code = main(["prune", source, "--calib", workspace["text"], "--seqlen", "32", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_output_is_refused_before_any_work(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(prune_args(workspace, out)) != 0
    assert "exists" in capsys.readouterr().err


def _refused(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["prune", "prune --stream", "eval", "sweep"])
def test_cuda_without_cuda_is_one_line(workspace, tmp_path, capsys, command):
    out = tmp_path / "out"
    extra = {"prune": ["--calib", workspace["text"], "--seqlen", "32"],
             "prune --stream": ["--stream", "--calib", workspace["text"], "--seqlen", "32"],
             "eval": ["--datasets", workspace["text"], "--seqlen", "32"],
             "sweep": ["--calib", workspace["text"], "--seqlen", "32", "--eval", workspace["text"]]}[command]
    args = [command.split()[0], workspace["model"], *extra, "--device", "cuda", "--out", str(out), "--quiet"]
    assert "device 'cuda' requested but CUDA is not available" in _refused(args, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_malformed_distributed_timeout_is_one_line(workspace, tmp_path, capsys, monkeypatch, value):
    # Read when a torchrun process joins its group (not at import): before anything is loaded or written.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("PRUNELLM_DIST_TIMEOUT_MIN", value)
    err = _refused(prune_args(workspace, tmp_path / "out", "--device", "cpu"), capsys)
    assert f"PRUNELLM_DIST_TIMEOUT_MIN must be a positive number of minutes, got '{value}'" in err
    assert list(tmp_path.iterdir()) == []

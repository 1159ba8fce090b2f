"""The serving side of the command line on a tiny model: `prune --format compressed`, `export
--to compressed`, `generate` and `bench-infer`, and the bad requests they refuse in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prunellm.cli import main
from prunellm.formats.compressed.checkpoint import MANIFEST_FILE, TENSORS_FILE
from tests.model_dirs import make_workspace, prune_args as base_prune_args

QUANT_24 = ["--method", "sparsegpt", "--nm", "2:4", "--bits", "4", "--group-size", "16", "--refine", "none"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("deploy"))


def prune_args(ws: dict, out, *extra: str) -> list[str]:
    return base_prune_args(ws, out, "--no-layer-errors", *extra)


@pytest.fixture(scope="module")
def compressed(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("direct") / "c"
    assert main(prune_args(workspace, out, *QUANT_24, "--format", "compressed")) == 0
    return out


def test_prune_to_compressed_and_export_of_the_saved_directory_agree(workspace, compressed, tmp_path, capsys):
    capsys.readouterr()
    saved = tmp_path / "hf"
    assert main(prune_args(workspace, saved, *QUANT_24, "--format", "hf")) == 0  # dense, with its grids
    assert (saved / "quant_grids.safetensors").is_file()
    exported = tmp_path / "exported"
    assert main(["export", str(saved), "--to", "compressed", "--out", str(exported)]) == 0
    assert "compressed layers" in capsys.readouterr().out
    manifest = json.loads((compressed / MANIFEST_FILE).read_text())
    assert manifest == json.loads((exported / MANIFEST_FILE).read_text())
    assert {spec["layout"] for spec in manifest["layers"].values()} == {"nm"} and len(manifest["layers"]) == 21
    assert manifest["dtype"] == "float16"  # a float32 model is stored in half precision unless told
    a, b = load_file(compressed / TENSORS_FILE), load_file(exported / TENSORS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((compressed / "report.json").read_text())
    sizes = report["compressed_format"]
    assert sizes["layers_bytes"] < 0.4 * sizes["layers_fp16_bytes"]  # 5.5 bits a weight at g16


def test_generate_and_bench_infer(compressed, capsys):
    capsys.readouterr()
    assert main(["generate", str(compressed), "--prompt", "w1 w2", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("w1 w2") and "5 tokens in" in captured.err
    assert main(["generate", str(compressed), "--prompt", "w1 w2", "--max-new-tokens", "5", "--device", "cpu",
                 "--no-own-loop"]) == 0  # Hugging Face's generate: the same text
    assert capsys.readouterr().out == captured.out
    # int8 activations: here the 4-bit head's (the layers' groups of 16 are not the int8 kernel's)
    assert main(["generate", str(compressed), "--prompt", "w1 w2", "--max-new-tokens", "5", "--device", "cpu",
                 "--head-bits", "4", "--int8-activations"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")
    assert main(["bench-infer", str(compressed), "--prompt-tokens", "8", "--new-tokens", "3", "--repeats", "1",
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "dense" in table and "compressed/dense: weights" in table


REFUSED = {
    "save dtype with compressed-tensors": (["--method", "gptq", "--bits", "4", "--format", "compressed-tensors",
                                            "--save-dtype", "float16"],
                                           "--save-dtype only applies with --format hf or compressed"),
    "quantized weights saved narrower": (["--bits", "4", "--save-dtype", "bfloat16", "--format", "hf"],
                                         "--save-dtype bfloat16 would move the quantized weights off their grid"),
    "gguf grid in compressed": (["--method", "gptq", "--gguf-type", "q4_0", "--format", "compressed"],
                                "use --format gguf"),
    "stream to compressed": (["--stream", "--format", "compressed"], "no --format compressed"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_serving_requests_are_one_line(workspace, tmp_path, capsys, case):
    extra, message = REFUSED[case]
    out = tmp_path / "out"
    assert main(prune_args(workspace, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_export_generate_and_bench_requests(workspace, compressed, tmp_path, capsys):
    cases = [
        (["export", str(compressed), "--to", "compressed", "--type", "q4_0"], "--type only applies with --to gguf"),
        (["export", str(tmp_path / "none"), "--to", "compressed"], "not a directory"),
        (["export", str(compressed), "--to", "compressed-tensors"], "already in prunellm's compressed format"),
        (["export", workspace["root"], "--to", "compressed"], "has no safetensors weights"),
        (["generate", str(tmp_path / "none"), "--prompt", "w1"], "not found"),
        (["bench-infer", workspace["model"]], "is not a compressed directory"),
        (["bench-infer", str(compressed), "--new-tokens", "0"], "--new-tokens must be positive"),
        (["bench-infer", str(compressed), "--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device"),
        (["generate", str(compressed), "--prompt", "w1", "--dense-budget-gib", "-1"], "--dense-budget-gib must be"),
        (["generate", str(compressed), "--prompt", "w1", "--device", "cpu", "--int8-activations"],
         "no layer of this model is 4- or 8-bit codes"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_gptq_to_compressed_tensors_loads_back_through_prunellm(workspace, tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    import prunellm

    saved, direct = tmp_path / "hf", tmp_path / "ct"
    gptq = ["--method", "gptq", "--bits", "4", "--group-size", "16"]
    assert main(prune_args(workspace, saved, *gptq, "--format", "hf")) == 0
    assert main(prune_args(workspace, direct, *gptq, "--format", "compressed-tensors")) == 0
    exported = tmp_path / "exported"
    assert main(["export", str(saved), "--to", "compressed-tensors", "--out", str(exported)]) == 0
    config = json.loads((direct / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    reference = prunellm.load(saved, "cpu")
    for path in (direct, exported):
        loaded = prunellm.load(path, "cpu")
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"):
            assert torch.equal(loaded.get_submodule(name).weight, reference.get_submodule(name).weight), (path, name)
    capsys.readouterr()
    assert main(prune_args(workspace, tmp_path / "no", *QUANT_24, "--format", "compressed-tensors")) == 2
    assert "compressed-tensors" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_eval_reads_a_compressed_directory(workspace, compressed, capsys):
    capsys.readouterr()
    assert main(["eval", str(compressed), "--datasets", workspace["text"], "--seqlen", "32", "--eval-tokens", "256",
                 "--quiet"]) == 0
    assert "perplexity:" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [["--sparsity", "0.5", "--refine", "none"], QUANT_24], ids=["sparse", "2:4+4-bit"])
def test_the_perplexity_reported_is_that_of_the_compressed_file(extra, workspace, tmp_path, capsys):
    # The file stores float16 values of a model computed in float32: the weights are rounded to
    # them before the evaluation, so report.json scores what `prunellm eval` reads back.
    out = tmp_path / "c"
    text = workspace["text"]
    assert main(prune_args(workspace, out, *extra, "--format", "compressed", "--eval", text, "--eval-tokens", "512",
                           "--no-dense-eval")) == 0
    reported = json.loads((out / "report.json").read_text())["perplexity"]["compressed"][text]
    assert main(["eval", str(out), "--datasets", text, "--seqlen", "32", "--eval-tokens", "512", "--quiet",
                 "--out", str(tmp_path / "eval.json")]) == 0
    measured = json.loads((tmp_path / "eval.json").read_text())["perplexity"]["values"][text]
    assert measured == pytest.approx(reported, rel=1e-6)


def test_a_streamed_prune_exports_to_compressed(workspace, tmp_path, capsys):
    streamed = tmp_path / "streamed"
    assert main(prune_args(workspace, streamed, *QUANT_24, "--stream")) == 0
    assert (streamed / "quant_grids.safetensors").is_file()  # the grids survive streaming
    assert main(["export", str(streamed), "--to", "compressed", "--out", str(tmp_path / "c")]) == 0
    manifest = json.loads((tmp_path / "c" / MANIFEST_FILE).read_text())
    assert {(spec["layout"], spec.get("bits")) for spec in manifest["layers"].values()} == {("nm", 4)}

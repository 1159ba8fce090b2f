"""One way to prepare a run: the same settings give the same model from the command line, from
`pipeline.prepare`/`run`, from an in-memory prune and from the sweep; the defaults are named
once and recorded."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prunellm.cli import main
from prunellm.compression import CalibrationConfig, EvalConfig, prune
from prunellm.errors import PrunellmError
from prunellm.formats import OutputSpec
from prunellm.io import load_model
from prunellm.methods import build_method
from prunellm.pipeline import Settings, prepare, resolve_method, run
from prunellm.sweep import SweepSetting
from tests.model_dirs import make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("pipeline"))


def _settings(ws: dict, out, **changes) -> Settings:
    calibration = CalibrationConfig(ws["text"], num_samples=4, seqlen=32)
    changes.setdefault("output", OutputSpec(path=str(out)))
    return Settings(model=ws["model"], method="sparsegpt", options={"nm": "2:4"}, calibration=calibration, **changes)


def test_cli_python_and_in_memory_prunes_give_the_same_weights(workspace, tmp_path) -> None:
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["prune", workspace["model"], "--nm", "2:4", "--calib", workspace["text"], "--num-samples", "4",
                 "--seqlen", "32", "--quiet", "--out", str(cli_out)]) == 0
    outcome = run(prepare(_settings(workspace, api_out)))
    assert outcome.path == api_out
    cli, api = load_file(cli_out / "model.safetensors"), load_file(api_out / "model.safetensors")
    assert cli.keys() == api.keys() and all(torch.equal(cli[k], api[k]) for k in cli)
    model, tokenizer = load_model(workspace["model"])
    method, allocation, note = resolve_method("sparsegpt", {"nm": "2:4"})
    assert method.config.refine == "alps" and "recommended defaults" in note  # the recommended defaults
    prune(model, tokenizer, method, CalibrationConfig(workspace["text"], num_samples=4, seqlen=32))
    down = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(model.get_submodule(down.removesuffix(".weight")).weight, cli[down])
    report = json.loads((cli_out / "report.json").read_text())
    assert report["defaults"] == "recommended" and report["method"]["refine"] == "alps"


def test_paper_defaults_run_the_method_as_published(workspace, tmp_path) -> None:
    job = prepare(_settings(workspace, tmp_path / "paper", defaults="paper"))
    assert job.note is None and job.method.describe() == build_method("sparsegpt", nm="2:4").describe()
    assert job.method.config.refine == "none"
    assert json.loads((run(job).path / "report.json").read_text())["defaults"] == "paper"


def test_the_sweep_resolves_methods_as_prune_does() -> None:
    setting = SweepSetting("sparsegpt", sparsity=0.7)
    for defaults in ("recommended", "paper"):
        expected = resolve_method("sparsegpt", {"sparsity": 0.7}, defaults=defaults)[0].describe()
        assert setting.build(defaults).describe() == expected
    assert setting.build("recommended").config.refine == "alps"


def test_prepare_refuses_bad_settings_before_loading_anything(workspace, tmp_path) -> None:
    missing = {**workspace, "model": str(tmp_path / "no-such-model")}
    with pytest.raises(PrunellmError, match="unknown defaults"):
        prepare(_settings(missing, tmp_path / "a", defaults="best"))
    with pytest.raises(PrunellmError, match="unknown format"):
        prepare(_settings(missing, tmp_path / "b", output=OutputSpec("onnx", str(tmp_path / "b"))))
    for fmt in ("hf", "compressed", "compressed-tensors"):  # unquantized GGUF types need a GGUF file
        with pytest.raises(PrunellmError, match="--gguf-type f16 only applies with --format gguf"):
            prepare(_settings(missing, tmp_path / fmt, output=OutputSpec(fmt, str(tmp_path / fmt), gguf_type="f16")))
    with pytest.raises(PrunellmError, match="--save-dtype only applies with --format hf or compressed"):
        prepare(_settings(missing, tmp_path / "e", output=OutputSpec("compressed-tensors", str(tmp_path / "e"),
                                                                      save_dtype="float16")))
    with pytest.raises(PrunellmError, match="needs --gguf-type"):
        prepare(_settings(missing, tmp_path / "c", output=OutputSpec("gguf", str(tmp_path / "c.gguf"))))
    with pytest.raises(PrunellmError, match="--stream never holds the whole model"):
        prepare(Settings(model=workspace["model"], output=OutputSpec(path=str(tmp_path / "d")), stream=True,
                         evaluation=EvalConfig(("wikitext2",))))


def test_the_forward_dtype_follows_the_cpu_is_recorded_and_replays(workspace, tmp_path, monkeypatch) -> None:
    from prunellm.walker import forward_dtype
    from tests.model_dirs import weights

    def prune_to(out, *extra: str) -> dict:
        assert main(["prune", workspace["model"], "--nm", "2:4", "--calib", workspace["text"], "--num-samples", "4",
                     "--seqlen", "32", "--quiet", "--format", "hf", "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "report.json").read_text())

    def same(a: str, b: str) -> bool:
        first, second = weights(tmp_path / a), weights(tmp_path / b)
        assert first.keys() == second.keys() and first
        return all(torch.equal(first[k], second[k]) for k in first)

    monkeypatch.setattr(forward_dtype, "cpu_multiplies_bf16", lambda: True)  # a CPU with bf16 instructions
    report = prune_to("bf16")
    assert report["walk"]["forward_dtype"] == report["settings"]["walk"]["forward_dtype"] == "bfloat16"
    report = prune_to("f32", "--forward-dtype", "float32")  # turned off
    assert report["walk"]["forward_dtype"] == report["settings"]["walk"]["forward_dtype"] == "float32"
    assert not same("bf16", "f32")
    report = prune_to("stream", "--stream")  # the streamed walk follows the same default
    assert report["walk"]["forward_dtype"] == "bfloat16" and same("bf16", "stream")

    monkeypatch.setattr(forward_dtype, "cpu_multiplies_bf16", lambda: False)  # a CPU without
    assert prune_to("plain")["walk"]["forward_dtype"] == "float32" and same("plain", "f32")
    # a replay there runs the forwards the recipe recorded, not this CPU's default
    assert main(["prune", "--recipe", str(tmp_path / "bf16"), "--out", str(tmp_path / "replay"), "--quiet"]) == 0
    replayed = json.loads((tmp_path / "replay" / "report.json").read_text())
    assert replayed["walk"]["forward_dtype"] == "bfloat16" and same("bf16", "replay")

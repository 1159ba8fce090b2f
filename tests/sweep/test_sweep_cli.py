"""`prunellm sweep` end to end on a tiny model: the table, the plots, bad input refused before any
work, a sweep cut short keeping its rows, and --resume finishing it without redoing any."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import prunellm.sweep.run as sweep_run
from prunellm.cli import main
from tests.model_dirs import make_workspace, model_dir, sweep_args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sweep"
    assert main(sweep_args(workspace, out, "--methods", "magnitude,wanda,sparsegpt", "--sparsities", "0.3,0.6",
                           "--nm", "2:4")) == 0
    return out


def _csv_rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_writes_table_json_and_plots(finished, workspace):
    rows = _csv_rows(finished)
    assert [r["key"] for r in rows] == ["dense"] + [f"{m}_{p}" for m in ("magnitude", "wanda", "sparsegpt")
                                                    for p in ("30", "60", "2-4")]
    ppl_column = f"ppl/{Path(workspace['text']).name}"
    assert all(float(r[ppl_column]) > 1 for r in rows)
    for r in rows[1:]:
        target = 0.5 if r["nm"] == "2:4" else float(r["sparsity"])
        assert abs(float(r["achieved_sparsity"]) - target) < 0.02  # wanda rounds per row of 64 inputs
        assert 0 < float(r["mean_layer_error"]) < 1
    data = json.loads((finished / "results.json").read_text())
    assert data["kind"] == "prunellm-sweep" and data["spec"]["calibration"]["num_samples"] == 4
    by_key = {r["key"]: r for r in data["rows"]}
    assert len(by_key["sparsegpt_60"]["layers"]) == 21  # 3 blocks x 7 linear layers
    # SparseGPT reconstructs: its mean layer error is below magnitude's at the same sparsity.
    for pattern in ("30", "60", "2-4"):
        mean = {m: sum(x["relative_error"] for x in by_key[f"{m}_{pattern}"]["layers"]) / 21
                for m in ("magnitude", "sparsegpt")}
        assert mean["sparsegpt"] < mean["magnitude"]
    for name in ("perplexity", "layer_errors"):
        with Image.open(finished / "plots" / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert (finished / "report.html").is_file() and (finished / "report.md").is_file()
    assert not [p.name for p in finished.rglob(".*")]  # no temporary files left behind


BAD = {
    "unknown method": (["--methods", "magnitude,obs"], "unknown method 'obs'"),
    "sparsity of one": (["--sparsities", "0.5,1"], "sparsity must be in (0, 1), got 1"),
    "sparsity of zero": (["--sparsities", "0"], "sparsity must be in (0, 1), got 0"),
    "not a number": (["--sparsities", "0.5,x"], "sparsity 'x' is not a number"),
    "n >= m": (["--nm", "4:4"], "0 < n < m"),
    "malformed pattern": (["--nm", "2/4"], "must look like '2:4'"),
    "pattern the layers cannot hold": (["--nm", "2:3"], "not divisible by m=3"),
    "bits": (["--bits", "1"], "bits must be between 2 and 8"),
    "method without sparsity": (["--methods", "gptq"], "does not take sparsity"),
    "unknown eval text": (["--eval", "wikitext9"], "wikitext9"),
    "unknown task": (["--tasks", "prunellm_basics,nope_task"], "unknown lm-eval task 'nope_task'"),
    "resume and overwrite": (["--resume", "--overwrite"], "exclude each other"),
    "last block past the end": (["--last-block", "7"], "outside the model's 3 blocks"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(workspace, tmp_path, capsys, case):
    extra, message = BAD[case]
    out = tmp_path / "out"
    code = main(sweep_args(workspace, out, *extra))
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error:") and message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_sweep_is_neither_mixed_nor_clobbered_silently(finished, workspace, capsys):
    before = (finished / "results.json").read_bytes()
    assert main(sweep_args(workspace, finished, "--methods", "wanda", "--sparsities", "0.5")) != 0
    assert "use --resume to finish it, --overwrite to start over" in capsys.readouterr().err
    # --resume with other calibration: refused, the results untouched.
    assert main(sweep_args(workspace, finished, "--methods", "wanda", "--sparsities", "0.3", "--seed", "1",
                           "--resume")) != 0
    assert "cannot resume" in capsys.readouterr().err
    assert (finished / "results.json").read_bytes() == before


def test_resume_refuses_rows_measured_in_another_dtype_or_on_another_model(workspace, tmp_path, capsys):
    source = model_dir(tmp_path, "llama", "model")
    out = tmp_path / "sweep"
    ws = {**workspace, "model": str(source)}
    args = sweep_args(ws, out, "--methods", "magnitude", "--sparsities", "0.5", "--no-layer-errors")
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["spec"]["dtype"] == "torch.float32"
    before = (out / "results.json").read_bytes()
    more = ["--sparsities", "0.5,0.6", "--resume"]
    assert main(args + more + ["--dtype", "bfloat16"]) != 0  # bfloat16 rows beside float32 ones
    assert "cannot resume" in capsys.readouterr().err
    shutil.rmtree(source)
    model_dir(tmp_path, "gpt2", "model")  # the same path, another model (class, parameter count)
    assert main(args + more) != 0
    assert "cannot resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_cut_short_sweep_keeps_rows_and_resume_finishes_it(workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(workspace, out, "--methods", "magnitude,sparsegpt", "--sparsities", "0.4,0.6")
    real = sweep_run.compress_model
    calls: list[str] = []

    def interrupted_on_third(model, method, *rest, **kwargs):
        calls.append(f"{method.name}_{method.config.sparsity}")
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third setting
        return real(model, method, *rest, **kwargs)

    monkeypatch.setattr(sweep_run, "compress_model", interrupted_on_third)
    assert main(args) == 130
    kept = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in kept["rows"]] == ["dense", "magnitude_40", "magnitude_60"]
    assert [r["key"] for r in _csv_rows(out)] == ["dense", "magnitude_40", "magnitude_60"]
    assert (out / "plots" / "perplexity.png").is_file()
    assert not [p.name for p in out.rglob(".*")]
    assert main(["report", str(out), "--quiet"]) == 0  # a partial sweep renders, saying what is missing
    assert "Incomplete: 2 of 4 requested settings have no result yet (sparsegpt 40%, sparsegpt 60%)" in (
        out / "report.md").read_text()

    calls.clear()
    monkeypatch.setattr(sweep_run, "compress_model", lambda *a, **k: calls.append("x") or real(*a, **k))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert len(calls) == 2  # only the two settings that were missing
    done = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in done["rows"]] == ["dense", "magnitude_40", "magnitude_60", "sparsegpt_40", "sparsegpt_60"]
    assert done["rows"][:3] == kept["rows"]  # finished rows (dense included) kept as they were


@pytest.mark.parametrize("every, drawn", [(0.0, ["dense", "magnitude_40", "magnitude_60"]), (1e9, ["dense", "magnitude_60"])],
                         ids=["every row", "first and last"])
def test_the_report_is_redrawn_at_most_every_interval_and_after_the_last_row(workspace, tmp_path, monkeypatch,
                                                                               every, drawn):
    import prunellm.cli as cli

    out = tmp_path / "sweep"
    seen: list[str] = []
    real = cli._write_report

    def counted(run, target=None):
        seen.append(json.loads((Path(run) / "results.json").read_text())["rows"][-1]["key"])
        return real(run, target)

    monkeypatch.setattr(cli, "REPORT_EVERY_S", every)
    monkeypatch.setattr(cli, "_write_report", counted)
    assert main(sweep_args(workspace, out, "--methods", "magnitude", "--sparsities", "0.4,0.6",
                           "--no-layer-errors")) == 0
    assert seen == drawn  # each drawing shows the rows finished by then; the last one shows them all
    assert "magnitude 60%" in (out / "report.md").read_text()


def test_a_sweep_stopped_by_an_error_draws_the_rows_it_kept(workspace, tmp_path, monkeypatch):
    import prunellm.cli as cli

    out = tmp_path / "sweep"
    real = sweep_run.compress_model
    calls: list[str] = []

    def fails_on_third(*args, **kwargs):
        calls.append("x")
        if len(calls) == 3:
            raise RuntimeError("out of memory in the third setting")
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "REPORT_EVERY_S", 1e9)  # only the first row is drawn on the way
    monkeypatch.setattr(sweep_run, "compress_model", fails_on_third)
    with pytest.raises(RuntimeError, match="third setting"):  # the cause, not a report's error, surfaces
        cli.run_sweep(cli.build_parser().parse_args(sweep_args(workspace, out, "--methods", "magnitude",
                                                                "--sparsities", "0.3,0.5,0.7")))
    assert "magnitude 50%" in (out / "report.md").read_text()  # the rows kept, drawn on the way out


def test_overwrite_starts_over_and_keeps_foreign_files(workspace, tmp_path):
    out = tmp_path / "sweep"
    assert main(sweep_args(workspace, out, "--methods", "magnitude", "--sparsities", "0.5", "--no-layer-errors")) == 0
    (out / "notes.txt").write_text("mine")
    assert main(sweep_args(workspace, out, "--methods", "wanda", "--sparsities", "0.3", "--overwrite")) == 0
    assert [r["key"] for r in _csv_rows(out)] == ["dense", "wanda_30"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "plots" / "layer_errors.png").is_file()


def test_non_sweep_directory_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    assert main(sweep_args(workspace, out, "--overwrite")) != 0
    assert "holds no sweep" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_the_sweep_forwards_follow_the_cpu_and_resume_only_in_the_same_dtype(workspace, tmp_path, monkeypatch,
                                                                            capsys):
    from prunellm.walker import forward_dtype

    args = sweep_args(workspace, tmp_path / "bf16", "--methods", "wanda", "--sparsities", "0.5", "--no-layer-errors")
    monkeypatch.setattr(forward_dtype, "cpu_multiplies_bf16", lambda: True)
    assert main(args) == 0
    assert json.loads((tmp_path / "bf16" / "results.json").read_text())["spec"]["walk"]["forward_dtype"] == "bfloat16"
    assert main(args + ["--sparsities", "0.5,0.6", "--resume", "--forward-dtype", "float32"]) != 0
    assert "cannot resume" in capsys.readouterr().err  # float32 rows beside bfloat16 ones
    # On a CPU without bf16 instructions the forwards are the model's float32, which the spec leaves
    # out as it did before "auto": sweeps begun by older versions still resume.
    monkeypatch.setattr(forward_dtype, "cpu_multiplies_bf16", lambda: False)
    plain = sweep_args(workspace, tmp_path / "plain", "--methods", "wanda", "--sparsities", "0.5", "--no-layer-errors")
    assert main(plain) == 0
    assert "forward_dtype" not in json.loads((tmp_path / "plain" / "results.json").read_text())["spec"]["walk"]

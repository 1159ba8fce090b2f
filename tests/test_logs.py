"""What a run shows and keeps: -v/--log-level on stderr, the log file beside report.json, and no
log left by a run that fails."""

import logging

import pytest

from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.logs import LOG_FILE, RunLog, configured, terminal_level
from tests.model_dirs import make_workspace, prune_args as base_prune_args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("logs"))


def prune_args(ws: dict, out, *extra: str) -> list[str]:
    return base_prune_args(ws, out, "--refine", "none", *extra)


def test_levels_from_the_flags():
    assert terminal_level(0, None) == logging.WARNING
    assert terminal_level(1, None) == logging.INFO
    assert terminal_level(3, None) == logging.DEBUG
    assert terminal_level(2, "ERROR") == logging.ERROR  # --log-level wins over -v


@pytest.mark.parametrize("flags,shown", [([], False), (["-v"], True), (["--log-level", "info"], True)])
def test_info_messages_show_when_asked_and_the_log_file_keeps_them(workspace, tmp_path, capsys, flags, shown):
    out = tmp_path / "out"
    assert main(prune_args(workspace, out, *flags)) == 0
    err = capsys.readouterr().err
    assert ("INFO prunellm.io.save: saved LlamaForCausalLM" in err) is shown
    # Whatever the terminal showed, the log file beside report.json has every info line, with times.
    lines = (out / LOG_FILE).read_text().splitlines()
    assert lines[0].endswith("prunellm " + " ".join(prune_args(workspace, out, *flags)))  # what was run
    assert any("prunellm.data.calibration: calibration: 4 windows of 32 tokens" in line for line in lines)
    assert any("prunellm.io.save: saved LlamaForCausalLM" in line for line in lines)
    assert lines[-1].startswith("20")  # each line opens with its time
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the work copy moved in


def test_the_logging_setup_is_put_back_after_a_command(workspace, tmp_path):
    package, root = logging.getLogger("prunellm"), logging.getLogger()
    before = package.level, root.level, list(root.handlers)
    assert main(prune_args(workspace, tmp_path / "out", "-vv")) == 0
    assert (package.level, root.level, list(root.handlers)) == before


def test_a_failed_run_leaves_no_log(workspace, tmp_path, capsys):
    out = tmp_path / "deeper" / "out"  # a parent made for the log goes too
    assert main(prune_args(workspace, out, "--seqlen", "100000")) == 2  # too few tokens: fails after prepare
    assert "too few" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_run_that_stops_keeps_its_log_for_the_resumed_one(tmp_path):
    out, work = tmp_path / "out", tmp_path / ".out.resume"
    with configured(), pytest.raises(PrunellmError):
        with RunLog(out, resume_dir=work, header="refused"):  # stopped before any resume state
            raise PrunellmError("bad")
    assert list(tmp_path.iterdir()) == []
    with configured(), pytest.raises(KeyboardInterrupt):
        with RunLog(out, resume_dir=work, header="first attempt"):
            work.mkdir()
            raise KeyboardInterrupt
    with configured():
        with RunLog(out, resume_dir=work, header="second attempt") as run_log:
            work.rmdir()
            out.mkdir()
            placed = run_log.place()
    assert placed == out / LOG_FILE
    text = placed.read_text()
    assert "refused" not in text and text.index("first attempt") < text.index("second attempt")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_single_file_output_has_its_log_beside_it(tmp_path):
    out = tmp_path / "model.gguf"
    with configured(), RunLog(out, single_file=True, header="gguf run") as run_log:
        logging.getLogger("prunellm.test").info("written")
        out.write_bytes(b"GGUF")
        placed = run_log.place()
    assert placed == tmp_path / "model.gguf.log" and "written" in placed.read_text()

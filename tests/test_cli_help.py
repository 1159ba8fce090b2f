"""`prunellm --version`, and help people can read: grouped, defaults shown, and no pointer to
files an installed package does not have."""

import re

import pytest

from prunellm.cli import build_parser, main
from prunellm.io.versions import package_version

COMMANDS = ("prune", "export", "generate", "bench-infer", "eval", "sweep", "report")


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunellm {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", package_version())


def test_prune_help_is_grouped_with_defaults(capsys):
    text = _help(capsys, "prune")
    titles = re.findall(r"^(\S[^:\n]*):$", text, flags=re.MULTILINE)
    assert titles == ["options", "model", "method", "calibration", "walk", "evaluation", "output"]
    section = {title: text.split(f"\n{title}:\n")[1].split("\n\n")[0] for title in titles}
    assert "--num-samples" in section["calibration"] and "--data-dir" in section["calibration"]
    assert "--device" in section["model"] and "--eval-tokens" in section["evaluation"]
    flat = " ".join(text.split())
    for default in ("calibration windows (default: 128)", "tokens per calibration window (default: 2048)",
                    "seed of the windows' draw (default: 0)", "(default: sparsegpt)",
                    "Default: compressed-tensors for a quantization-only run"):
        assert default in flat, default
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert "-v, --verbose" in text and "--log-level" in text and "--recipe" in text


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_no_help_points_at_files_an_installed_package_lacks(capsys, command):
    text = _help(capsys, *([command] if command else []))
    for pointer in ("README", "docs/", "bench/"):  # the repository's files, not the package's
        assert pointer not in text, (command, pointer)


def test_every_command_takes_the_logging_flags():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(COMMANDS)
    for name, parser in commands.items():
        dests = {action.dest for action in parser._actions}
        assert {"verbose", "log_level"} <= dests, name

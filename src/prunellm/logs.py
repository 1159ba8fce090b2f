"""What a run says while it works: `-v`/`--log-level` on the terminal, and a prune's log file.

The library logs through `logging.getLogger(__name__)` and never configures logging itself;
the command line does it here. The terminal shows warnings unless asked for more (`-v`: info,
`-vv`: debug, or `--log-level`). A prune with an output also writes every info line, with
times, to a log file that lands beside its report.json (`DIR/prune.log`; `FILE.gguf.log` for a
GGUF file). The output directory is renamed into place whole (io/atomic.py), so the log is
written to a hidden sibling (`.DIR.log`) while the run works and moved in once the output is
there: a run that fails leaves no log, as it leaves no output; a streamed run that stops short
with its resume state written keeps its log, and the run that resumes it appends to it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "prune.log"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PACKAGE = "prunellm"
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FILE_FORMAT = "%(asctime)s " + _FORMAT

log = logging.getLogger(__name__)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show prunellm's messages: -v info, -vv debug (default: warnings only)")
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS, default=None,
                        help="level of the messages shown (overrides -v; default: WARNING)")


def terminal_level(verbose: int, level: str | None) -> int:
    """The level the terminal shows: --log-level, else one step below WARNING per -v."""
    if level is not None:
        return logging.getLevelName(level)
    return (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG


@contextmanager
def configured(verbose: int = 0, level: str | None = None) -> Iterator[int]:
    """Show prunellm's messages at the chosen level on stderr (other libraries' from WARNING)
    for the duration; yields the level. Everything is put back on exit, so that one process
    can run several commands (the tests call `cli.main` many times)."""
    shown = terminal_level(verbose, level)
    handler = logging.StreamHandler()
    handler.setLevel(shown)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root, package = logging.getLogger(), logging.getLogger(PACKAGE)
    saved = root.level, package.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    package.setLevel(min(shown, logging.INFO))  # INFO at least: a run's log file records it
    try:
        yield shown
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        package.setLevel(saved[1])


class RunLog:
    """A prune's log file, from its start to its output (see the module docstring).

    out: the output (a directory, or a file when single_file); resume_dir: a streamed run's
    work directory (streaming/resume.py): while it exists, a later run continues this one and
    its log; header: the log's first line."""

    def __init__(self, out: str | Path, *, single_file: bool = False, resume_dir: Path | None = None,
                 header: str | None = None) -> None:
        self.out = Path(out).expanduser()
        self.single_file = single_file
        self.resume_dir = resume_dir
        self.header = header  # the log's first line: what was run, by which version
        self.work = self.out.parent / f".{self.out.name}.log"  # a fixed name: the resumed run finds it
        self.handler: logging.FileHandler | None = None
        self.placed: Path | None = None
        self.created: list[Path] = []  # parents made for the log, removed again if the run fails

    @property
    def target(self) -> Path:
        return Path(f"{self.out}.log") if self.single_file else self.out / LOG_FILE

    def __enter__(self) -> RunLog:
        missing = self.out.absolute().parent
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.work, mode="a" if self.resume_dir is not None else "w", encoding="utf-8")
        self.handler.setLevel(min(logging.getLogger(PACKAGE).getEffectiveLevel(), logging.INFO))
        self.handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        logging.getLogger().addHandler(self.handler)
        if self.header is not None:
            log.info("%s", self.header)
        return self

    def place(self) -> Path:
        """The output is in place: move the log beside its report; returns where it went."""
        self._close()
        os.replace(self.work, self.target)
        self.placed = self.target
        return self.target

    def __exit__(self, *exc: object) -> None:
        self._close()
        if self.placed is None and not (self.resume_dir is not None and self.resume_dir.exists()):
            self.work.unlink(missing_ok=True)
            for directory in self.created:  # deepest first; only those the run left empty
                try:
                    directory.rmdir()
                except OSError:
                    break

    def _close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None

"""The work directory of a streamed run, from which a killed run starts again where it stopped.

`.OUT.resume/` beside the output holds `out/` (the output being written: shards land there as
they are finished), `state.json` (the run's settings, the shards written, the next block to
compress, the records of the layers done) and the next block's calibration inputs, one file
per process. Every file is written to a temporary name and renamed, state.json last: whatever
instant a run is killed at, the state names only files that are complete. Once `out/` is
complete the state says so, `out/` is renamed to OUT and the work directory removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

from prunellm.errors import PrunellmError
from prunellm.io.atomic import atomic_path, remove_leftovers, write_json_atomic
from prunellm.io.save import move_into_place

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
FORMAT = 1

# Tests kill the run at a named point with SIGKILL ("shard:K": block K's shard written, progress
# not yet committed; "block:K": block K committed; "finish": output complete, not yet renamed
# into place): no cleanup runs, as with kill -9 or a power cut.
KILL_AT = "PRUNELLM_TEST_KILL_AT"


class RunState:
    """settings: what the run computes (a resumed run must compute the same); written: shard
    units done, with their tensor bytes; next_block: the first block not yet committed;
    layers: per-layer records (LayerRecord fields) of the blocks done; done: `out/` complete."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).expanduser()
        self.root = self.out.parent / f".{self.out.name}.resume"
        self.staging = self.root / "out"
        self.data: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return self.root / STATE_FILE

    def clear_finished(self) -> None:
        """Remove what a run that finished (its output renamed into place) may have left."""
        if self.path.is_file() and not self.staging.exists() and _read(self.path).get("done"):
            shutil.rmtree(self.root, ignore_errors=True)

    def load(self, settings: dict[str, Any]) -> bool:
        """Read the state of an interrupted run of these settings; False when there is none.

        An interrupted run of other settings is refused: resuming it with these would mix two
        runs' blocks in one output.
        """
        settings = _plain(settings)
        if not self.path.is_file():
            self.data = {"format": FORMAT, "settings": settings, "written": {}, "next_block": 0, "layers": [],
                         "done": False}
            return False
        data = _read(self.path)
        if data.get("format") != FORMAT:
            raise PrunellmError(f"{self.root} was written by another prunellm version: delete it to start over")
        difference = _first_difference(data["settings"], settings)
        if difference is not None:
            raise PrunellmError(f"{self.root} holds an interrupted run of another command ({difference}): run that "
                                f"command again to resume it, or delete {self.root} to start over")
        self.data = data
        return True

    def create(self) -> None:
        """Make the work directory and its first state, clearing the temporaries of writes a
        killed attempt was in the middle of (one process does this, before any other writes)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.root)
        remove_leftovers(self.staging)
        if not self.path.is_file():
            self.commit()

    def commit(self, **changes: Any) -> None:
        """Record progress: the state file is replaced whole, after the files it names exist."""
        self.data.update(_plain(changes))
        write_json_atomic(self.path, self.data)

    @property
    def next_block(self) -> int:
        return int(self.data["next_block"])

    @property
    def written(self) -> dict[str, int]:
        return dict(self.data["written"])

    # Calibration activations: the inputs of the next block, per process.

    def inputs_path(self, block: int, rank: int, world: int) -> Path:
        return self.root / f"inputs-{block:05d}-rank{rank}-of-{world}.pt"

    def save_inputs(self, block: int, rank: int, world: int, inputs: list[torch.Tensor]) -> None:
        """Checkpoint `block`'s inputs (per batch, (B, T, C)) exactly, for a resumed run."""
        with atomic_path(self.inputs_path(block, rank, world)) as tmp:
            torch.save([t.detach().cpu() for t in inputs], tmp)

    def load_inputs(self, block: int, rank: int, world: int) -> list[torch.Tensor]:
        path = self.inputs_path(block, rank, world)
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError) as error:
            raise PrunellmError(f"cannot resume: the inputs of block {block} are missing or damaged ({path.name}: "
                                f"{str(error).splitlines()[0]}); delete {self.root} to start over") from None

    def drop_inputs(self, block: int, rank: int, world: int) -> None:
        self.inputs_path(block, rank, world).unlink(missing_ok=True)

    def finish(self, overwrite: bool) -> Path:
        """Move the complete output into place and remove the work directory."""
        move_into_place(self.staging, self.out, overwrite)
        shutil.rmtree(self.root, ignore_errors=True)
        return self.out


def kill_point(point: str) -> None:
    """SIGKILL this process here when the test hook names this point (see KILL_AT)."""
    if os.environ.get(KILL_AT) == point:
        log.warning("%s=%s: killing the run", KILL_AT, os.environ[KILL_AT])
        os.kill(os.getpid(), signal.SIGKILL)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PrunellmError(f"cannot read {path}: {error}; delete {path.parent} to start over") from None


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so that saved and new settings compare."""
    return json.loads(json.dumps(value, default=str))


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if old != new:
        return f"{path}: {old!r} there, {new!r} here"
    return None

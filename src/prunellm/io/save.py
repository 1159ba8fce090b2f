"""Save a model as a standard Hugging Face directory, all at once or not at all."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunellm.errors import PrunellmError
from prunellm.io.atomic import make_sibling_dir, sibling_name, write_json_atomic
from prunellm.io.dtypes import cast_weights
from prunellm.io.gguf_source import clear_gguf_marks
from prunellm.io.grids import save_gguf_blocks
from prunellm.io.grids import save_quant_grids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


def check_output_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Fail before a long job, rather than after it, if `out_dir` cannot be written."""
    out = Path(out_dir).expanduser()
    if os.path.lexists(out):
        if not out.is_dir():
            raise PrunellmError(f"output path exists and is not a directory: {out}")
        if not overwrite:
            raise PrunellmError(f"output directory already exists: {out} (use overwrite to replace it)")
    # The parent may not exist yet (save_model creates it): check the nearest one that does.
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PrunellmError(f"cannot create output directory {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PrunellmError(f"cannot create output directory {out}: {ancestor} is not writable")


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    *,
    report: dict | None = None,
    overwrite: bool = False,
    gguf_blocks: dict | None = None,
    quant_grids: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write safetensors weights, config, tokenizer and `report.json` (when given) to `out_dir`.

    Everything goes to a hidden sibling directory first and is renamed into place, so a
    crash never leaves a half-written `out_dir`. With `overwrite`, an existing `out_dir` is
    replaced only once the new one is complete. A GGUF-loaded model has its quantizer marks
    cleared in place (see `clear_gguf_marks`). The grids quantized layers ended on are kept
    beside the weights (gguf_blocks, quant_grids files) for a lossless export later. `dtype`:
    write the weights in this dtype (`io.dtypes.hf_save_dtype` chooses it); the model's
    parameters are converted in place first, as a save is a run's last use of them. Returns
    the output path.
    """
    out = Path(out_dir).expanduser()
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_gguf_marks(model)
    if dtype is not None:
        cast_weights(model, dtype)

    staging = make_sibling_dir(out, "tmp")
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if report is not None:
            write_json_atomic(staging / REPORT_FILE, report)
        if gguf_blocks:
            save_gguf_blocks(staging, gguf_blocks)
        if quant_grids:
            save_quant_grids(staging, quant_grids)
        move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved %s to %s", type(model).__name__, out)
    return out


def move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename a complete `staging` directory to `out`; with `overwrite`, replace an existing
    `out` only once the new one is in place (the old one is put back if that rename fails)."""
    if not os.path.lexists(out):
        os.rename(staging, out)
        return
    if not overwrite:  # appeared while we were writing
        raise PrunellmError(f"output directory already exists: {out} (use overwrite to replace it)")
    aside = sibling_name(out, "old")
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)  # put the previous result back rather than leave nothing
        raise
    # The new directory is complete and in place; a leftover old copy is only clutter.
    shutil.rmtree(aside, ignore_errors=True)
    if os.path.lexists(aside):
        log.warning("could not remove the previous output, moved aside to %s", aside)

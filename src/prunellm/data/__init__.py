"""Calibration sets and evaluation texts: local files first, `datasets` when online."""

from prunellm.data.bos import needs_bos
from prunellm.data.calibration import load_calibration
from prunellm.data.paths import resolve_data_dir
from prunellm.data.sources import CalibrationSource, check_source_options, describe_source
from prunellm.data.text import load_eval_text
from prunellm.data.tokenize import encode

__all__ = ["CalibrationSource", "check_source_options", "describe_source", "encode", "load_calibration",
           "load_eval_text", "needs_bos", "resolve_data_dir"]

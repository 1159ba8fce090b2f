"""Sweeps: one model compressed at many settings (methods x sparsities or n:m patterns x bits),
each evaluated, every result written as it finishes (results.json, results.csv); figures and
the report are drawn from those by `prunellm.report`."""

from prunellm.sweep.results import SweepResults, describe_row, load_results
from prunellm.sweep.run import Sweep, SweepConfig, prepare_output
from prunellm.sweep.settings import SweepSetting, build_settings, parse_grid

__all__ = ["Sweep", "SweepConfig", "SweepResults", "SweepSetting", "build_settings", "describe_row", "load_results",
           "parse_grid", "prepare_output"]

"""Replaying a run: `prunellm prune --recipe FILE` reads the settings a run recorded and runs them
again, to the same weights.

Every prune records its settings in report.json under "settings" (`pipeline.settings_record`:
the `pipeline.Settings` fields as `prepare` resolved them, every method option written out).
A recipe is such a report.json, an output directory holding one, or a JSON or YAML file of
the same settings (YAML needs PyYAML), either at its top level or under `settings:`:

    method: gptq
    options: {bits: 4, group_size: 128}
    calibration: {source: wikitext2, num_samples: 128, seqlen: 2048}
    output: {format: hf, path: out/gptq4}

Fields a recipe leaves out take `Settings`' defaults; an unknown field or a value of the wrong
type is refused with its name. Flags given beside `--recipe` override the recipe's values
(`--out`, `--device`, `--sparsity`, ...); a `--method` other than the recipe's drops the
recipe's method options. `--overwrite` and `--quiet` always come from the command line: a
replay never replaces an output unless asked there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from .errors import PrunellmError
from .io.save import REPORT_FILE
from .pipeline import Settings

YAML_SUFFIXES = (".yaml", ".yml")

# Each prune flag (argparse dest) and the setting it sets; method options are "options.NAME".
FLAG_SETTINGS = {
    "model": "model", "method": "method", "defaults": "defaults", "allocation": "allocation",
    "owl_lambda": "owl_lambda", "owl_threshold": "owl_threshold", "allocation_unit": "allocation_unit",
    "calib": "calibration.source", "num_samples": "calibration.num_samples", "seqlen": "calibration.seqlen",
    "seed": "calibration.seed", "data_dir": "calibration.data_dir", "calib_config": "calibration.config_name",
    "calib_split": "calibration.split", "calib_column": "calibration.column", "scheme": "scheme",
    "device": "walk.device", "true_sequential": "walk.true_sequential", "include": "walk.include",
    "exclude": "walk.exclude", "first_block": "walk.first_block", "last_block": "walk.last_block",
    "batch_size": "walk.batch_size", "offload_activations": "walk.offload_activations",
    "forward_dtype": "walk.forward_dtype", "no_layer_errors": "walk.layer_errors",
    "eval": "evaluation.datasets", "eval_seqlen": "evaluation.seqlen", "eval_tokens": "evaluation.max_tokens",
    "eval_batch_size": "evaluation.batch_size", "no_dense_eval": "evaluation.dense",
    "format": "output.format", "out": "output.path", "save_dtype": "output.save_dtype",
    "gguf_type": "output.gguf_type", "gguf_other_type": "output.gguf_other_type",
    "dtype": "dtype", "stream": "stream",
}
# How the run behaves, not what it computes: never from a recipe.
FROM_COMMAND_LINE = {"quiet": "walk.progress", "overwrite": "output.overwrite"}
# Flags that are not settings at all.
NOT_SETTINGS = {"command", "recipe", "verbose", "log_level", "debug", "argv"}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The settings record in `path`: a report.json (or a directory holding one), or a JSON or
    YAML file of settings."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / REPORT_FILE
    if not file.is_file():
        raise PrunellmError(f"no such recipe: {file}")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in YAML_SUFFIXES:
        try:
            import yaml
        except ImportError:
            raise PrunellmError(f"reading the YAML recipe {file} needs PyYAML (pip install pyyaml); "
                                "a JSON recipe needs nothing") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PrunellmError(f"{file} is not valid YAML: {' '.join(str(error).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PrunellmError(f"{file} is not valid JSON ({error}); a YAML recipe ends in .yaml") from None
    if not isinstance(data, dict):
        raise PrunellmError(f"{file} holds no settings: expected a mapping, got {type(data).__name__}")
    if "settings" in data:
        data = data["settings"]
    elif "layers" in data and "method" in data:
        raise PrunellmError(f"{file} is the report of a run that recorded no settings (an older prunellm): "
                            "write its settings in a YAML or JSON recipe")
    if not isinstance(data, dict):
        raise PrunellmError(f"{file}: settings must be a mapping, got {type(data).__name__}")
    return data


def settings_from_record(record: dict[str, Any]) -> Settings:
    """`Settings` from a settings record (`read_recipe`), each field checked against its type."""
    return _build(Settings, record, "")


def replay_settings(recipe: str | Path, given: Settings, flags: set[str]) -> Settings:
    """The recipe's settings with those of `flags` (the argparse dests given on the command
    line) taken from `given` (the command line's settings)."""
    from .methods import option_specs

    settings = settings_from_record(read_recipe(recipe))
    options = option_specs()
    unknown = sorted(flags - set(FLAG_SETTINGS) - set(FROM_COMMAND_LINE) - NOT_SETTINGS - set(options))
    if unknown:
        raise PrunellmError(f"--{unknown[0].replace('_', '-')} cannot be combined with --recipe: "
                            "write it in the recipe instead")
    values = _flatten(settings)
    mine = _flatten(given)
    for flag in flags:
        if flag in FLAG_SETTINGS:
            values[FLAG_SETTINGS[flag]] = mine[FLAG_SETTINGS[flag]]
    for path in FROM_COMMAND_LINE.values():
        values[path] = mine[path]
    method_options = dict(settings.options) if values["method"] == settings.method else {}
    method_options.update({name: given.options[name] for name in flags if name in options})
    if "gguf_type" in flags:  # --gguf-type feeds the gguf option (none for f16, bf16, f32)
        method_options.pop("gguf", None)
        if "gguf" in given.options:
            method_options["gguf"] = given.options["gguf"]
    values["options"] = method_options
    return _unflatten(Settings, values)


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options and arguments `argv` gives explicitly (not from defaults):
    `argv` parsed again with every default suppressed."""
    actions = [action for sub in _parsers(parser) for action in sub._actions]
    saved = [action.default for action in actions]
    try:
        for action in actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv))) - {"command"}
    finally:
        for action, default in zip(actions, saved):
            action.default = default


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parsers(sub)
    return found


def _flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """{"calibration.seed": 0, ...}: every field of `settings` and of the dataclasses in it."""
    values = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            values.update(_flatten(value, f"{prefix}{field.name}."))
        else:
            values[f"{prefix}{field.name}"] = value
    return values


def _unflatten(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            kwargs[field.name] = _unflatten(hints[field.name], values, f"{prefix}{field.name}.")
        else:
            kwargs[field.name] = values[f"{prefix}{field.name}"]
    return cls(**kwargs)


def _build(cls: type, record: Any, where: str) -> Any:
    if not isinstance(record, dict):
        raise PrunellmError(f"recipe setting {where or 'settings'} must be a mapping, got {record!r}")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(record) - set(names))
    if unknown:
        raise PrunellmError(f"unknown recipe setting {where}{unknown[0]!s}; "
                            f"{where.rstrip('.') or 'the top level'} takes {', '.join(names)}")
    values = {}
    for name, value in record.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{where}{name}.")
        else:
            values[name] = _convert(hint, value, f"{where}{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` as the annotation `hint` wants it (a JSON list for a tuple), or a clear refusal."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except PrunellmError:
                continue
    elif hint is Any:
        return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_convert(args[0], item, where) for item in value)
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (int, str, bool) and type(value) is hint:
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise PrunellmError(f"recipe setting {where}: expected {expected}, got {value!r}")

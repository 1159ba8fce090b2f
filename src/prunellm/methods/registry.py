"""Methods by name, and the options they take (what the command line builds its flags from)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ..errors import PrunellmError
from .method import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method becomes buildable by its name (the package imports every module)."""
    names = [f.name for group in cls.option_groups for f in dataclasses.fields(group)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise PrunellmError(f"method {cls.name!r} takes {', '.join(twice)} from two option groups")
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise PrunellmError(f"method {cls.name!r} registered twice: {known.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def build_method(name: str, **options: Any) -> Method:
    """The method registered as `name`, configured from keyword options (unknown ones are errors)."""
    if name not in _REGISTRY:
        raise PrunellmError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _REGISTRY[name](**options)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option as the command line sees it.

    type: what a command-line value converts to (int, float, str or bool; nm is "2:4", a str). A
    bool whose default is True needs a --no- form (argparse.BooleanOptionalAction), one whose
    default is False a plain switch. defaults: each method that takes the option, with its
    default (bits: 4 for gptq, 16 for the pruning methods). flag: "--group-size", or None for an
    option with no flag of its own: gguf (the command line's --gguf-type feeds it, and also takes
    the unquantized f16, bf16, f32 for --format gguf), GPTQ's keep_zeros and refit_scales (the
    Python API's).
    """

    name: str
    type: type
    help: str
    choices: tuple[str, ...] | None
    defaults: dict[str, Any]
    flag: str | None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def default(self) -> Any:
        """The default every method taking the option shares; None where they differ (see defaults)."""
        values = list(self.defaults.values())
        return values[0] if all(v == values[0] for v in values) else None


def option_specs() -> dict[str, OptionSpec]:
    """Every option of the registered methods, by name, in the order first met (methods by name,
    each's options in its order). An option several methods take must read the same in each
    (help, type, choices, flag): one flag serves them all."""
    specs: dict[str, OptionSpec] = {}
    for method in method_names():
        for group in _REGISTRY[method].option_groups:
            hints = typing.get_type_hints(group)
            for f in dataclasses.fields(group):
                spec = OptionSpec(f.name, f.metadata.get("type") or _scalar(hints[f.name], f.name),
                                  f.metadata["help"], f.metadata.get("choices"), {method: f.default},
                                  "--" + f.name.replace("_", "-") if f.metadata.get("flag", True) else None)
                known = specs.get(f.name)
                if known is not None:
                    if dataclasses.replace(known, defaults={}) != dataclasses.replace(spec, defaults={}):
                        raise PrunellmError(f"option {f.name!r} of {method!r} differs from "
                                            f"{', '.join(known.methods)}'s")
                    spec = dataclasses.replace(known, defaults={**known.defaults, method: f.default})
                specs[f.name] = spec
    return specs


def _scalar(hint: Any, name: str) -> type:
    """int from `int | None`; an annotation of several types needs option(type=...)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if len(args) != 1 or not isinstance(args[0], type):
        raise PrunellmError(f"option {name!r} ({hint}) needs option(type=...): the type a command-line value takes")
    return args[0]

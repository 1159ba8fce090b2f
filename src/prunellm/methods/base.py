"""A method turns a layer's weight and input statistics into a solver call. No math here."""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch

from ..errors import PrunellmError
from ..solvers import SolveResult
from ..solvers.gguf_grids import GGUF_MIXES, mixed_layer_type

Statistics = Literal["none", "diag", "hessian"]

_REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def build_method(name: str, **options: Any) -> "Method":
    """The method registered as `name`, configured from keyword options (unknown ones are errors)."""
    if name not in _REGISTRY:
        raise PrunellmError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _REGISTRY[name](**options)


class Method(ABC):
    """One compression method: a config dataclass and `compress(W, H) -> SolveResult`.

    `statistics` says what the walker must collect from calibration: nothing, the
    diagonal of H (squared input norms), or the full Hessian.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise PrunellmError(
                f"method {self.name!r} does not take {', '.join(unknown)}; it takes {', '.join(sorted(fields))}"
            )
        self.config = self.config_class(**options)

    @property
    @abstractmethod
    def statistics(self) -> Statistics: ...

    @abstractmethod
    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None) -> SolveResult:
        """weight: (out, in) float32; hessian: (in, in), (in,) or None as `statistics` says. A
        method that asks for the diagonal also takes the full Hessian (collected anyway when
        the walker reports layer errors).

        The caller may lend its storage, for solves with less memory; a method need not use it.
        consume_weight: `weight` is of no further use to the caller (one (out, in) float32 less
        at the solve, 172 MiB for a LLaMA-7B MLP projection). restore_hessian: `hessian` may be
        overwritten too, and `restore_hessian(t)` fills t with its original values (one (in, in)
        float32 less, 462 MiB for a LLaMA-7B down_proj); after the call it holds no meaning."""

    @property
    def overwrites_lent_hessian(self) -> bool:
        """Whether `compress` uses a lent Hessian (`restore_hessian`): a host backs one up only then."""
        return False

    def with_sparsity(self, sparsity: float) -> "Method":
        """The same method with another unstructured sparsity (per-layer targets of an allocation)."""
        if not hasattr(self.config, "sparsity") or getattr(self.config, "nm", None) is not None:
            raise PrunellmError(f"method {self.name!r} with these options has no unstructured sparsity to allocate")
        clone = copy.copy(self)
        clone.config = dataclasses.replace(self.config, sparsity=sparsity)
        return clone

    def for_layer(self, name: str, block: int, n_blocks: int) -> "Method":
        """The method for one layer: itself, or with a GGUF mixture (q4_k_m) resolved to the
        type llama.cpp's rule gives this layer."""
        gguf = getattr(self.config, "gguf", None)
        if gguf is None or gguf.lower() not in GGUF_MIXES:
            return self
        clone = copy.copy(self)
        clone.config = dataclasses.replace(self.config, gguf=mixed_layer_type(gguf, layer_role(name), block, n_blocks))
        return clone

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self.config)}


# Hugging Face layer names of the roles llama.cpp's mixtures give more bits (see gguf_grids).
_ROLE_SUFFIXES = {"attn_v": ("v_proj",), "ffn_down": ("down_proj", "fc2", "dense_4h_to_h", "mlp.c_proj", "w2")}


def layer_role(name: str) -> str | None:
    """'attn_v', 'ffn_down' or None for a module name such as model.layers.3.mlp.down_proj."""
    for role, suffixes in _ROLE_SUFFIXES.items():
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return role
    return None

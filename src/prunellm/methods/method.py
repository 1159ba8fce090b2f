"""A method composed of steps: its own solve (a prune, or GPTQ alone, or nothing), an optional
refinement, an optional quantization after. The steps' math lives in solvers/; here only the
order, and the options each step reads."""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

import torch

from ..errors import PrunellmError
from ..solvers import HeldOut, SolveResult
from ..solvers.gguf_grids import GGUF_MIXES, mixed_layer_type
from ..solvers.shrink_choice import AUTO, HELD_OUT_EVERY
from .quantize_after import QuantOptions, quantize_after
from .refinement import RefineOptions, refine

Statistics = Literal["none", "diag", "hessian"]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """A method's options: its option groups (small dataclasses, validated each on its own), read
    as one flat set of attributes: `config.sparsity`, `config.refines`. An option that no group
    has is an AttributeError, so `getattr(method.config, "nm", None)` works for every method."""

    groups: tuple[Any, ...]

    @classmethod
    def build(cls, method: str, group_classes: Iterable[type], options: dict[str, Any]) -> "MethodConfig":
        """Each group from its share of `options`, in the method's order (its errors come first)."""
        group_classes = tuple(group_classes)
        taken = [f.name for group in group_classes for f in dataclasses.fields(group)]
        unknown = sorted(set(options) - set(taken))
        if unknown:
            raise PrunellmError(f"method {method!r} does not take {', '.join(unknown)}; "
                                f"it takes {', '.join(sorted(taken))}")
        return cls(tuple(group(**{f.name: options[f.name] for f in dataclasses.fields(group) if f.name in options})
                         for group in group_classes))

    def __getattr__(self, name: str) -> Any:  # only for names that are not MethodConfig's own
        if not name.startswith("_"):
            for group in self.__dict__.get("groups", ()):
                if name in _readable(type(group)):
                    return getattr(group, name)
        raise AttributeError(f"{type(self).__name__} has no option {name!r}")

    def group(self, group_class: type) -> Any | None:
        return next((group for group in self.groups if type(group) is group_class), None)

    def replace(self, **changes: Any) -> "MethodConfig":
        """The same options but `changes`, each group validated again."""
        groups = []
        for group in self.groups:
            mine = {name: value for name, value in changes.items() if name in _fields(type(group))}
            groups.append(dataclasses.replace(group, **mine) if mine else group)
        return MethodConfig(tuple(groups))

    def as_dict(self) -> dict[str, Any]:
        # Last group first: the key order of reports from before the groups were composed (they were
        # inherited then), kept so that reports compare byte for byte.
        return {name: value for group in reversed(self.groups) for name, value in dataclasses.asdict(group).items()}


def _fields(group_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(group_class)}


def _readable(group_class: type) -> set[str]:
    """A group's options and its properties (`refines`, `quantizes`, ...)."""
    return _fields(group_class) | {name for name, value in vars(group_class).items() if isinstance(value, property)}


class Method(ABC):
    """One compression method: `compress(W, H) -> SolveResult`, configured by keyword options.

    A method file declares `name`, `option_groups` (the prune's own options first, then
    RefineOptions and QuantOptions if it takes them), `needs` (what its solve needs from
    calibration) and `solve`; `compress` adds the refinement and the quantization after that
    the options ask for. `statistics` says what the walker must collect: nothing, the
    diagonal of H (squared input norms), or the full Hessian.
    """

    name: ClassVar[str]
    option_groups: ClassVar[tuple[type, ...]] = ()
    needs: ClassVar[Statistics] = "hessian"

    def __init__(self, **options: Any) -> None:
        self.config = MethodConfig.build(self.name, self.option_groups, options)

    @abstractmethod
    def solve(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
              restore_hessian: Callable[[torch.Tensor], None] | None = None,
              held_out: HeldOut | None = None) -> SolveResult:
        """The method's own solver call: its prune (or GPTQ alone, or nothing). Lending as in
        `compress`; it is lent only when no refinement or quantization follows."""

    def quantized_after(self) -> dict[str, Any] | None:
        """The keywords of `quantize_after` if the layer is quantized after the prune, else None."""
        options = self.config.group(QuantOptions)
        return dataclasses.asdict(options) if options is not None and options.quantizes else None

    def _refinement(self) -> RefineOptions | None:
        options = self.config.group(RefineOptions)
        return options if options is not None and options.refines else None

    @property
    def statistics(self) -> Statistics:
        return "hessian" if self._refinement() or self.quantized_after() else self.needs

    def compress(self, weight: torch.Tensor, hessian: torch.Tensor | None, *, consume_weight: bool = False,
                 restore_hessian: Callable[[torch.Tensor], None] | None = None,
                 held_out: HeldOut | None = None) -> SolveResult:
        """weight: (out, in) float32; hessian: (in, in), (in,) or None as `statistics` says. A
        method that asks for the diagonal also takes the full Hessian (collected anyway when
        the walker reports layer errors).

        The caller may lend its storage, for solves with less memory; a method need not use it.
        consume_weight: `weight` is of no further use to the caller (one (out, in) float32 less
        at the solve, 172 MiB for a LLaMA-7B MLP projection). restore_hessian: `hessian` may be
        overwritten too, and `restore_hessian(t)` fills t with its original values (one (in, in)
        float32 less, 462 MiB for a LLaMA-7B down_proj); after the call it holds no meaning."""
        refinement, after = self._refinement(), self.quantized_after()
        if refinement is None and after is None:
            return self.solve(weight, hessian, consume_weight=consume_weight, restore_hessian=restore_hessian,
                              held_out=held_out)
        # Both aim at the dense weight again, with the Hessian: the solve works on copies.
        result = self.solve(weight, hessian, held_out=held_out)
        if refinement is not None:
            result = refine(weight, hessian, result, refinement, nm=getattr(self.config, "nm", None),
                            per_row=bool(getattr(self.config, "per_row", False)))
        return result if after is None else quantize_after(result, hessian, **after, held_out=held_out)

    @property
    def overwrites_lent_hessian(self) -> bool:
        """Whether `compress` uses a lent Hessian (`restore_hessian`): a host backs one up only then."""
        return False

    @property
    def held_out_every(self) -> int:
        """k > 0: its solve scores choices on held-out calibration windows (one in k, see
        HessianAccumulator), which the walker then collects: a quantization after the prune with
        hessian_shrink="auto". 0: none needed."""
        after = self.quantized_after()
        return HELD_OUT_EVERY if after is not None and after["hessian_shrink"] == AUTO else 0

    def without_held_out(self) -> "Method":
        """The same method choosing nothing on held-out windows (too few calibration windows to
        hold any out): "auto" shrinkage becomes 0, the paper's GPTQ."""
        if getattr(self.config, "hessian_shrink", None) != AUTO:
            return self
        clone = copy.copy(self)
        clone.config = self.config.replace(hessian_shrink=0.0)
        return clone

    def with_sparsity(self, sparsity: float) -> "Method":
        """The same method with another unstructured sparsity (per-layer targets of an allocation)."""
        if not hasattr(self.config, "sparsity") or getattr(self.config, "nm", None) is not None:
            raise PrunellmError(f"method {self.name!r} with these options has no unstructured sparsity to allocate")
        clone = copy.copy(self)
        clone.config = self.config.replace(sparsity=sparsity)
        return clone

    def for_layer(self, name: str, block: int, n_blocks: int) -> "Method":
        """The method for one layer: itself, or with a GGUF mixture (q4_k_m) resolved to the
        type llama.cpp's rule gives this layer."""
        gguf = getattr(self.config, "gguf", None)
        if gguf is None or gguf.lower() not in GGUF_MIXES:
            return self
        clone = copy.copy(self)
        clone.config = self.config.replace(gguf=mixed_layer_type(gguf, layer_role(name), block, n_blocks))
        return clone

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **self.config.as_dict()}


# Hugging Face layer names of the roles llama.cpp's mixtures give more bits (see gguf_grids).
_ROLE_SUFFIXES = {"attn_v": ("v_proj",), "ffn_down": ("down_proj", "fc2", "dense_4h_to_h", "mlp.c_proj", "w2"),
                  "attn_output": ("o_proj", "self_attn.out_proj", "attn.c_proj", "attention.dense", "self_attn.dense")}


def layer_role(name: str) -> str | None:
    """'attn_v', 'ffn_down', 'attn_output' or None for a module name such as model.layers.3.mlp.down_proj."""
    for role, suffixes in _ROLE_SUFFIXES.items():
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return role
    return None

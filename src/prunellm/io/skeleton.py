"""A model whose weights are not in memory: built on the meta device, filled one part at a time.

`build_skeleton` makes the model from its config with every parameter on the meta device
(shapes and dtypes, no storage); buffers computed at construction (rotary tables, Gemma's
embedding scale) are real and small. `Skeleton.materialize` gives a set of parameters real
values read from the checkpoint, `Skeleton.release` sends them back to meta. Tied parameters
(an LM head that is the embedding) stay one tensor throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.io.checks import check_weight_finite
from prunellm.io.dtypes import cast_checked, declared_dtype, first_tensor_dtype
from prunellm.io.lazy import LazyCheckpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class Skeleton:
    """`model` (meta parameters) and the checkpoint tensors it is made of.

    Tensors are named as the checkpoint names them ("stored" names), which is also how
    `save_pretrained` writes them back (it reverts transformers' load-time renames, such as
    GPT-NeoX's `embed_out` -> `lm_head`); `model_name` maps them to the model's own names.
    """

    def __init__(self, model: PreTrainedModel, checkpoint: LazyCheckpoint) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self._aliases: dict[str, list[str]] = {}  # a parameter's name -> every name it goes by
        by_identity: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            by_identity.setdefault(id(param), []).append(name)
        for names in by_identity.values():
            for name in names:
                self._aliases[name] = names
        self.model_name = _match_names(model, checkpoint)  # stored name -> model name, in model order
        self._checked: set[str] = set()  # stored names already read and found finite

    def stored(self, prefix: str = "") -> list[str]:
        """Stored names of the tensors under the module path `prefix`, in model order."""
        start = prefix + "." if prefix else ""
        return [stored for stored, name in self.model_name.items() if name.startswith(start)]

    def read(self, stored: Iterable[str], device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Checkpoint tensors by stored name, on `device`, each in the model's dtype for it (the
        floating ones in `dtype` when given: a value it cannot hold is an error)."""
        out = {}
        for key in stored:
            # One at a time: a tensor read maps its file, and the mapped pages count in the process's
            # resident memory until it is freed. Read together, a block's float16 tensors were all
            # resident beside their float32 copies.
            tensor = self.checkpoint.read([key])[key]
            # As load_model: a NaN poisons every Hessian downstream, far from its cause. Checked on
            # the first read only: a parked layer is read again, once per calibration batch in a
            # statistics pass, and the check costs as much as the read.
            if key not in self._checked:
                check_weight_finite(key, tensor)
                self._checked.add(key)
            if not tensor.is_floating_point():
                out[key] = tensor.to(device)
            elif dtype is None or not self._is_parameter(key):  # buffers keep theirs, as in save_model
                out[key] = tensor.to(device=device, dtype=self._slot(self.model_name[key]).dtype)
            else:
                out[key] = cast_checked(key, tensor, dtype).to(device)
        return out

    def cast(self, stored: Iterable[str], dtype: torch.dtype) -> None:
        """Convert these floating parameters to `dtype` in place, one at a time (each one's old
        storage is freed as the next is made): a finished block before it is written. Buffers
        keep their dtype, as `io.dtypes.cast_weights` leaves them in the in-memory path."""
        for key in stored:
            if not self._is_parameter(key):
                continue
            current = self.tensor(key)
            if current.is_floating_point() and current.dtype != dtype:
                self._assign(self.model_name[key], cast_checked(key, current, dtype))

    def materialize(self, stored: Iterable[str], device: torch.device | str) -> None:
        """Give these parameters and buffers their checkpoint values, on `device`."""
        for key, tensor in self.read(stored, device).items():
            self._assign(self.model_name[key], tensor)

    def release(self, module_path: str) -> None:
        """Every parameter under `module_path` back to the meta device (buffers stay: small)."""
        module = self.model.get_submodule(module_path) if module_path else self.model
        for short, param in list(module.named_parameters()):
            if param.device.type != "meta":
                name = f"{module_path}.{short}" if module_path else short
                self._assign(name, torch.empty_like(param, device="meta"))

    def tensor(self, stored: str) -> torch.Tensor:
        """The model's current value of a stored tensor."""
        return self._slot(self.model_name[stored]).detach()

    def _is_parameter(self, stored: str) -> bool:
        parent, _, leaf = self.model_name[stored].rpartition(".")
        return leaf in self.model.get_submodule(parent)._parameters

    def _slot(self, name: str) -> torch.Tensor:
        parent, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(parent)
        return module._parameters[leaf] if leaf in module._parameters else module._buffers[leaf]

    def _assign(self, name: str, tensor: torch.Tensor) -> None:
        parent, _, leaf = name.rpartition(".")
        if leaf in self.model.get_submodule(parent)._buffers:
            self.model.get_submodule(parent)._buffers[leaf] = tensor
            return
        param = nn.Parameter(tensor, requires_grad=False)
        for alias in self._aliases[name]:  # one tensor for every name a tied parameter has
            owner, _, attr = alias.rpartition(".")
            self.model.get_submodule(owner)._parameters[attr] = param


def build_skeleton(checkpoint: LazyCheckpoint, dtype: torch.dtype | str) -> Skeleton:
    """The causal LM of a checkpoint directory, with no weights allocated, computing in `dtype`
    ("auto": the config's dtype, else the checkpoint's, as from_pretrained decides)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = checkpoint.directory
    try:
        config = AutoConfig.from_pretrained(checkpoint.directory)
        if dtype == "auto":
            dtype = _auto_dtype(config, checkpoint)
        with init_empty_weights():  # parameters on meta; buffers (rotary tables) real
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        text = str(error).strip().splitlines()
        raise PrunellmError(f"cannot build the model of {directory}: {text[0] if text else error!r}") from None
    model.tie_weights()  # from_pretrained ties after loading; here the ties must exist before
    model.eval()
    return Skeleton(model, checkpoint)


def _auto_dtype(config: Any, checkpoint: LazyCheckpoint) -> torch.dtype:
    return declared_dtype(config.to_dict()) or first_tensor_dtype(checkpoint.tensors.values()) or torch.float32


def _match_names(model: PreTrainedModel, checkpoint: LazyCheckpoint) -> dict[str, str]:
    """Stored name -> model state-dict name, as from_pretrained matches them: transformers'
    renames (GPT-NeoX's `embed_out`, LayerNorm `gamma`) and a missing or extra base-model prefix.

    Refuses checkpoints that need more than renaming (fused MoE experts: several stored tensors
    make one parameter, which cannot be read tensor by tensor) and ones that lack a parameter.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    meta = model.state_dict(keep_vars=True)
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if not isinstance(c, WeightRenaming)]
    prefix = getattr(model, "base_model_prefix", None) or None
    found: dict[str, str] = {}  # model name -> stored name
    for stored in checkpoint.keys():
        name, converted = rename_source_key(stored, renamings, converters, prefix, meta)
        if converted is not None:
            raise PrunellmError(f"{model.config.model_type} checkpoints are converted on load ({stored} is merged "
                                "with other tensors): streaming cannot read them tensor by tensor; "
                                "prune without --stream")
        if name in meta and name not in found:
            found[name] = stored
        elif name not in meta:
            log.info("checkpoint tensor %s is not used by %s", stored, type(model).__name__)
    params = dict(model.named_parameters(remove_duplicate=False))
    by_identity: dict[int, list[str]] = {}
    for name, param in params.items():
        by_identity.setdefault(id(param), []).append(name)
    for names in by_identity.values():
        present = [name for name in names if name in found]
        if not present:
            raise PrunellmError(f"cannot stream {checkpoint.directory}: its safetensors have no tensor for {names[0]}")
        for name in present[1:]:  # a tied parameter is written once, under its first name
            del found[name]
    return {found[name]: name for name in meta if name in found}

"""A compressed directory as a Hugging Face model: the skeleton of its config, the compressed
layers put in place (expanded here; `prunellm.load` may keep them compressed instead), and
every other tensor loaded by name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunellm.devices import resolve_device
from prunellm.errors import PrunellmError

from .checkpoint import CompressedCheckpoint, read_compressed
from .layer import CompressedWeight, decompress_weight

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_expanded(directory: str | Path, device: torch.device | str | None = None) -> PreTrainedModel:
    """The model of a compressed directory with every compressed layer expanded once, on
    `device` (a GPU expands a 7B model in seconds), in the stored dtype, in eval mode."""
    target = resolve_device(device)
    directory = Path(directory).expanduser()
    checkpoint = read_compressed(directory)
    model = build_skeleton(directory, checkpoint.dtype)
    for name, packed in checkpoint.layers.items():
        parent, child = layer_slot(model, name)
        setattr(parent, child, dense_linear(packed, checkpoint.tensors.pop(f"{name}.bias", None), target))
    load_rest(model, checkpoint)
    return model.to(target).eval()


def build_skeleton(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The model of `directory`'s config with its parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(directory)
        with init_empty_weights():  # parameters on meta; buffers (rotary tables) real
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        text = str(error).strip().splitlines()
        raise PrunellmError(f"cannot build the model of {directory}: {text[0] if text else error!r}") from None
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def layer_slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the layer `name`, refusing a name the model lacks."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        getattr(parent, child)
    except AttributeError:
        raise PrunellmError(f"compressed layer {name} is not a module of {type(model).__name__}") from None
    return parent, child


def dense_linear(packed: CompressedWeight, bias: torch.Tensor | None, device: torch.device) -> nn.Linear:
    """An nn.Linear holding the expanded weight, exactly as it was compressed."""
    out_features, in_features = packed.spec.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    on_device = CompressedWeight(packed.spec, {part: t.to(device) for part, t in packed.tensors.items()})
    layer.weight = nn.Parameter(decompress_weight(on_device), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def load_rest(model: nn.Module, checkpoint: CompressedCheckpoint) -> None:
    """Every other tensor by name; tied tensors re-tied; refuses a model left with a hole."""
    result = model.load_state_dict(checkpoint.tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise PrunellmError(f"{checkpoint.directory} holds tensors the model does not have: "
                            f"{', '.join(result.unexpected_keys[:3])}")
    model.tie_weights()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":
            raise PrunellmError(f"{checkpoint.directory} has no tensor for {name}")

"""A complete GGUF file from a Hugging Face model in memory (and its tokenizer and config),
written with the `gguf` package alone: no llama.cpp converter, no source .gguf.

Metadata: the architecture's hyper-parameters (arch.py) and the tokenizer (tokenizer.py).
Tensors: names from the `gguf` package's own map of Hugging Face names; layouts as llama.cpp's
converter writes them (arch.py: llama's q/k rows, Gemma's norm +1). The compressed layers go on
the GGUF grids the solver left them on (packed exactly) or are rounded onto the type here; the
rest are written as `other_type` ('keep': f16, the converter's default; norms and biases f32).

Memory: two passes. The first plans every tensor's name, type and byte size from shapes alone
(the GGUF header needs them before any data); the second computes one tensor's bytes, writes
them and drops them before the next. Beyond the model itself, the peak is one tensor's float32
copy and its packed bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from prunellm.errors import PrunellmError
from prunellm.io.atomic import atomic_path
from prunellm.solvers.gguf_grids import GGUFBlocks, check_gguf_problem, fit_gguf_blocks, layer_gguf_type

from .arch import ArchSpec, arch_for, permute_rows
from .export import FLOAT_TYPES, GGUFExportConfig, _file_type, _fit_here, _float_payload, _tensor_type
from .pack import pack_gguf_blocks
from .tokenizer import gguf_vocab, write_vocab

if TYPE_CHECKING:
    from torch import nn

Fetch = Callable[[str], torch.Tensor]

log = logging.getLogger(__name__)


@dataclass
class _Tensor:
    """One planned GGUF tensor: its name, the Hugging Face parameter it comes from, its
    (rows, cols) or (n,) shape, its type ('f32', 'f16', 'bf16' or a grid), and for a compressed
    layer the module name (and the solver's grid, if any)."""

    name: str
    param: str
    shape: tuple[int, ...]
    type: str
    layer: str | None = None
    blocks: GGUFBlocks | None = None


def export_hf_gguf(model: nn.Module, tokenizer: Any, layers: dict[str, GGUFBlocks | None], out_path: str | Path,
                   config: GGUFExportConfig, extra_metadata: dict[str, str] | None = None,
                   fetch: Fetch | None = None) -> Path:
    """Write `model` (a Hugging Face causal LM) as a GGUF file at out_path, through a temporary
    file and a rename. layers: the compressed linear layers by module name, each with the GGUF
    grid the solver left it on, or None to round it onto `config.type` here. fetch: reads one
    tensor by its state-dict name, for a model whose parameters are not in memory (a skeleton
    on the meta device over a saved directory); None: the model's own tensors."""
    import gguf

    spec = arch_for(model.config)
    plan = _plan(model, layers, config, spec)
    vocab = gguf_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], spec.gguf_name)
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise PrunellmError(f"GGUF output path is a directory: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # temporary beside it, fsynced and renamed; removed on error
        writer = gguf.GGUFWriter(tmp, spec.gguf_name)
        _write_metadata(writer, model, spec, config, extra_metadata or {})
        write_vocab(writer, vocab)
        for entry in plan:
            qtype = _qtype(entry.type)
            shape = gguf.quant_shape_to_byte_shape(entry.shape, qtype) if qtype is not None else entry.shape
            dtype = np.uint8 if qtype is not None else np.dtype(np.float32 if entry.type == "f32" else np.float16)
            writer.add_tensor_info(entry.name, shape, dtype, int(np.prod(shape)) * np.dtype(dtype).itemsize, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for entry, data in _payloads(model, plan, spec, fetch or _in_memory(model)):
            writer.write_tensor_data(data)
            del data  # one tensor's bytes at a time
        writer.close()
    log.info("wrote %s (%d tensors, %.1f MB)", out, len(plan), out.stat().st_size / 1e6)
    return out


def check_hf_gguf_export(model: nn.Module, tokenizer: Any, layer_names: list[str], config: GGUFExportConfig) -> None:
    """Refuse, before any work, an export that cannot succeed: an architecture, tokenizer or
    layer the writer cannot map, a type a width cannot hold."""
    spec = arch_for(model.config)
    spec.hparams(model.config)
    _plan(model, dict.fromkeys(layer_names), config, spec)
    if tokenizer is not None:
        gguf_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], spec.gguf_name)


def _params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors by state-dict name (meta ones too), a tied output head once (as the
    embedding: llama.cpp reuses token_embd when the file has no output.weight)."""
    embedding = model.get_input_embeddings().weight
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen or (tensor is not embedding and _same_storage(tensor, embedding)):
            continue
        seen.add(id(tensor))
        yield name, tensor


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device.type != "meta" and a.shape == b.shape and a.data_ptr() == b.data_ptr()


def _in_memory(model: nn.Module) -> Fetch:
    params = dict(_params(model))
    return lambda name: params[name].detach()


def _plan(model: nn.Module, layers: dict[str, GGUFBlocks | None], config: GGUFExportConfig,
          spec: ArchSpec) -> list[_Tensor]:
    import gguf

    arch_ids = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    n_blocks = int(model.config.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch_ids[spec.gguf_name], n_blocks)
    by_param = {f"{layer}.weight": layer for layer in layers}
    plan: list[_Tensor] = []
    for param, tensor in _params(model):
        target = names.get_name(param, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise PrunellmError(f"cannot map tensor '{param}' to a {spec.gguf_name} GGUF tensor")
        layer = by_param.pop(param, None)
        shape = tuple(int(d) for d in tensor.shape)
        if layer is not None:
            shape = tuple(_weight(model, layer).shape)  # (out, in) whatever the module stores
        if len(shape) == 1:
            plan.append(_Tensor(target, param, shape, "f32"))
            continue
        if layer is None:
            other = "f16" if config.other_type == "keep" else config.other_type
            type_name = other if other in FLOAT_TYPES else layer_gguf_type(other, shape[1])
            plan.append(_Tensor(target, param, shape, type_name))
            continue
        if config.type in FLOAT_TYPES:
            plan.append(_Tensor(target, param, shape, config.type, layer))
            continue
        expected = layer_gguf_type(_tensor_type(config.type, target, n_blocks), shape[1])
        check_gguf_problem(expected, shape[1], sparse=False)
        blocks = layers[layer]
        if blocks is not None and blocks.type != expected:
            raise PrunellmError(f"layer '{layer}' was quantized onto {blocks.type}; it cannot be exported as "
                                f"{config.type} (prune again with that GGUF type)")
        plan.append(_Tensor(target, param, shape, expected, layer, blocks))
    if by_param:
        raise PrunellmError(f"model has no layer '{next(iter(by_param.values()))}'")
    return plan


def _weight(model: nn.Module, layer: str) -> torch.Tensor:
    from prunellm.layers import weight_view

    return weight_view(model.get_submodule(layer))


def _payloads(model: nn.Module, plan: list[_Tensor], spec: ArchSpec,
              fetch: Fetch) -> Iterator[tuple[_Tensor, np.ndarray]]:
    """Each planned tensor's bytes, computed when its turn comes."""
    from transformers.pytorch_utils import Conv1D

    config = model.config
    for entry in plan:
        values = fetch(entry.param).to(device="cpu", dtype=torch.float32, copy=True)
        if entry.layer is not None and isinstance(model.get_submodule(entry.layer), Conv1D):
            values = values.t().contiguous()  # (out, in), as the solver saw it
        if spec.norm_shift and entry.name.endswith("norm.weight"):
            values += spec.norm_shift  # stored as the model computes it (Gemma: x * (1 + w))
        blocks = entry.blocks
        if spec.permute_qk and (".attn_q." in entry.name or ".attn_k." in entry.name):
            heads = config.num_attention_heads if ".attn_q." in entry.name else config.num_key_value_heads
            values = permute_rows(values, heads)
            if blocks is not None:
                blocks = GGUFBlocks(blocks.type, permute_rows(blocks.params, heads))
        yield entry, _bytes(values, entry, blocks)


def _bytes(values: torch.Tensor, entry: _Tensor, blocks: GGUFBlocks | None) -> np.ndarray:
    if entry.type in FLOAT_TYPES:
        return _float_payload(values.numpy(), entry.type)[0]
    if blocks is None:
        if entry.layer is not None:
            sparse = bool((values == 0).float().mean() > 0.05)
            blocks = _fit_here(values, entry.type, sparse, entry.layer)
        else:  # an embedding or head under --gguf-other-type: round to nearest
            blocks = fit_gguf_blocks(entry.type, values, keep_zero=False)
    return pack_gguf_blocks(blocks, blocks.round(values))


def _qtype(type_name: str) -> Any:
    """The ggml type of a planned type; None for f32/f16 (numpy arrays the writer types itself)."""
    import gguf

    if type_name in ("f32", "f16"):
        return None
    return gguf.GGMLQuantizationType[type_name.upper()]


def _write_metadata(writer: Any, model: nn.Module, spec: ArchSpec, config: GGUFExportConfig,
                    extra: dict[str, str]) -> None:
    import gguf

    name = getattr(model.config, "_name_or_path", "") or ""
    writer.add_type(gguf.GGUFType.MODEL)
    if name:
        writer.add_name(Path(str(name)).name)
    for suffix, value in spec.hparams(model.config).items():
        _put(writer, f"{spec.gguf_name}.{suffix}", value)
    file_type = _file_type("f16" if config.type == "keep" else config.type)
    if file_type is not None:
        writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in extra.items():
        writer.add_string(key, value)


def _put(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, list):
        writer.add_array(key, value)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))

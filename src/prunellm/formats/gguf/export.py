"""Export a compressed model as a GGUF file that llama.cpp runs, reusing a source GGUF's metadata.

Why reuse the source GGUF: its key-value metadata (architecture hyper-parameters, tokenizer
vocabulary, merges, special tokens, chat template) was written by llama.cpp's own converter,
which the llama.cpp project maintains for hundreds of architectures. Re-deriving it from a
Hugging Face config by hand would duplicate that converter and drift from it. So the exporter
copies every key of the source GGUF, keeps its tensor names, order and layouts, and replaces
only the tensors the solver changed, packed onto exactly the grid the solver used. See
docs/gguf.md. (A model loaded from Hugging Face has no source GGUF: hf_writer.py writes it whole.)

Layout: tensor names come from the `gguf` package's own map from Hugging Face names; for
architectures whose converter permutes the rows of q/k for rotary embeddings (llama), the same
permutation is applied. Every replaced tensor is checked against the source tensor it replaces
(shape, and a share of equal signs that a wrong layout cannot reach).

Memory: the header is planned from shapes and types; then each tensor is read, laid out,
packed, written and dropped before the next, so the export holds one layer's copy at a time.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunellm.errors import PrunellmError
from prunellm.io.atomic import atomic_path
from prunellm.formats.gguf.pack import pack_gguf_blocks
from prunellm.solvers.gguf_grids import (GGUF_GRIDS, GGUF_MIXES, MIX_ROLES, GGUFBlocks, fit_gguf_blocks, gguf_grid,
                                         check_gguf_problem, layer_gguf_type, mixed_layer_type)

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

FLOAT_TYPES = ("f32", "f16", "bf16")
OTHER_TYPES = ("keep", *FLOAT_TYPES, *GGUF_GRIDS)
# Architectures whose llama.cpp converter permutes q/k rows (and transformers un-permutes them).
_ROTARY_PERMUTED = {"llama": True}
# Below this, the exported tensor is not the pruned version of the source tensor it replaces.
MIN_SIGN_AGREEMENT = 0.65  # of the weights nonzero in both; chance is 0.5


@dataclass
class GGUFExportConfig:
    """type: the GGUF type of the compressed linear layers ('q4_0', ...). Layers the solver
    already put on a GGUF grid must be on this type (or its fallback for widths the type
    cannot block); others are rounded onto it here (round-to-nearest, zeros kept).
    other_type: embeddings, head and layers left uncompressed: 'keep' (the source's bytes),
    'f32', 'f16', 'bf16' or a GGUF type. One-dimensional tensors (norms) always keep theirs."""

    type: str
    other_type: str = "keep"

    def __post_init__(self) -> None:
        if self.type.lower() not in FLOAT_TYPES:
            gguf_grid(self.type)
        if self.other_type.lower() not in OTHER_TYPES:
            raise PrunellmError(f"unknown type '{self.other_type}' for other tensors: choose {', '.join(OTHER_TYPES)}")
        self.type, self.other_type = self.type.lower(), self.other_type.lower()


@dataclass
class _Replacement:
    """A compressed layer and the source tensor it replaces. Its weight is read, laid out and
    packed only when its turn to be written comes (one tensor's copy at a time)."""

    source_name: str
    layer: str  # module name
    type: str  # what is stored: a float type or a GGUF grid
    blocks: GGUFBlocks | None  # the solver's grid in the model's row order; None: fitted when written


def export_gguf(
    model: nn.Module,
    layers: dict[str, GGUFBlocks | None],
    source: str | Path,
    out_path: str | Path,
    config: GGUFExportConfig,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write `model` as a GGUF file at out_path (through a temporary file and a rename).

    layers: the compressed linear layers by module name, each with the GGUF grid the solver
    left it on, or None to round it onto `config.type` here. source: the GGUF file the model
    was loaded from (metadata, tokenizer and untouched tensors come from it).
    """
    import gguf

    reader = _open_source(source)
    arch = _field(reader, "general.architecture")
    plan = _plan(model, layers, reader, arch, config)
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise PrunellmError(f"GGUF output path is a directory: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    modules = dict(model.named_modules())
    with atomic_path(out) as tmp:  # temporary beside it, fsynced and renamed; removed on error
        writer = gguf.GGUFWriter(tmp, arch)
        _copy_metadata(reader, writer, config.type if plan else config.other_type, extra_metadata or {})
        # Two passes: the header needs every tensor's size, known from shapes and types alone;
        # then each tensor's bytes are computed, written and dropped before the next one's.
        for tensor in reader.tensors:
            writer.add_tensor_info(tensor.name, *_tensor_layout(tensor, plan.get(tensor.name), config))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            replacement = plan.get(tensor.name)
            if replacement is not None:
                data = _replacement_payload(modules, replacement, tensor, arch, reader)
            else:
                data = _tensor_payload(tensor, config)[0]
            writer.write_tensor_data(data)
            del data
        writer.close()
    log.info("wrote %s (%d tensors replaced, %.1f MB)", out, len(plan), out.stat().st_size / 1e6)
    return out


def check_gguf_export(model: nn.Module, layer_names: list[str], source: str | Path, config: GGUFExportConfig) -> None:
    """Refuse, before any work, an export that cannot succeed: an unreadable source, an
    architecture or layer the exporter cannot map, shapes that differ, a type a width cannot hold."""
    reader = _open_source(source)
    _plan(model, dict.fromkeys(layer_names), reader, _field(reader, "general.architecture"), config)


def _open_source(source: str | Path) -> Any:
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise PrunellmError(f"source GGUF not found: {path}")
    stat = path.stat()
    return _read_gguf(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_gguf(path: Path, mtime_ns: int, size: int) -> Any:
    """A parsed GGUF, kept for the next call on the same unchanged file: parsing a tokenizer's
    100k metadata strings takes the gguf package seconds, and a prune checks then exports."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as error:
        raise PrunellmError(f"cannot read source GGUF {path}: {error}") from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise PrunellmError(f"source GGUF has no '{key}' metadata")
    return field.contents()


def _plan(model: nn.Module, layers: dict[str, GGUFBlocks | None], reader: Any, arch: str,
          config: GGUFExportConfig) -> dict[str, _Replacement]:
    """Map every compressed layer to the source tensor it replaces, checking names, shapes and
    types (the layout check needs the weight: it runs when the tensor is written)."""
    import gguf

    arch_ids = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise PrunellmError(f"GGUF architecture '{arch}' is unknown to the gguf package; cannot map tensor names")
    n_blocks = int(_field(reader, f"{arch}.block_count"))
    names = gguf.get_tensor_name_map(arch_ids[arch], n_blocks)
    source_tensors = {t.name: t for t in reader.tensors}
    modules = dict(model.named_modules())
    plan: dict[str, _Replacement] = {}
    for name, blocks in layers.items():
        target = names.get_name(name + ".weight", try_suffixes=(".weight",))
        if target is None or target not in source_tensors:
            raise PrunellmError(f"cannot map layer '{name}' to a tensor of the {arch} GGUF")
        source_tensor = source_tensors[target]
        shape = tuple(_weight_view(modules.get(name), name).shape)  # (out, in), no copy
        if tuple(int(d) for d in reversed(source_tensor.shape)) != shape:
            raise PrunellmError(f"layer '{name}' has shape {shape} but GGUF tensor {target} "
                                f"has {tuple(int(d) for d in reversed(source_tensor.shape))}")
        if config.type in FLOAT_TYPES:
            plan[target] = _Replacement(target, name, config.type, None)
            continue
        expected = layer_gguf_type(_tensor_type(config.type, target, n_blocks), shape[1])
        check_gguf_problem(expected, shape[1], sparse=False)
        if blocks is not None and blocks.type != expected:
            raise PrunellmError(f"layer '{name}' was quantized onto {blocks.type}; it cannot be exported as "
                                f"{config.type} (prune again with that GGUF type)")
        plan[target] = _Replacement(target, name, expected, blocks)
    return plan


def _replacement_payload(modules: dict[str, Any], replacement: _Replacement, source_tensor: Any, arch: str,
                         reader: Any) -> np.ndarray:
    """The bytes of one compressed layer in the GGUF's row order, checked against the tensor it replaces."""
    name, target = replacement.layer, replacement.source_name
    weight = _to_gguf_rows(_weight_of(modules.get(name), name), target, arch, reader)  # (out, in) float32
    _check_layout(weight, source_tensor, name)
    if replacement.type in FLOAT_TYPES:
        return _float_payload(weight.numpy(), replacement.type)[0]
    blocks = replacement.blocks
    if blocks is None:
        blocks = _fit_here(weight, replacement.type, bool((weight == 0).float().mean() > 0.05), name)
    else:
        blocks = GGUFBlocks(blocks.type, _to_gguf_rows(blocks.params, target, arch, reader))
    return pack_gguf_blocks(blocks, blocks.round(weight))


def _tensor_layout(tensor: Any, replacement: _Replacement | None,
                   config: GGUFExportConfig) -> tuple[tuple[int, ...], Any, int, Any]:
    """(shape, dtype, nbytes, ggml type) of what _replacement_payload or _tensor_payload will
    write for one source tensor, from shapes and types alone."""
    import gguf

    if replacement is None and (config.other_type == "keep" or len(tensor.shape) < 2):
        data = tensor.data  # the source's bytes, memory-mapped
        return data.shape, data.dtype, data.nbytes, tensor.tensor_type if data.dtype == np.uint8 else None
    shape = tuple(int(d) for d in reversed(tensor.shape))  # (rows, cols)
    if replacement is not None:
        type_name = replacement.type
    else:
        other = config.other_type
        type_name = other if other in FLOAT_TYPES else layer_gguf_type(other, shape[-1])
    if type_name in ("f32", "f16"):
        dtype = np.dtype(np.float32 if type_name == "f32" else np.float16)
        return shape, dtype, int(np.prod(shape)) * dtype.itemsize, None
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype


def _tensor_type(type_name: str, target: str, n_blocks: int) -> str:
    """The type of GGUF tensor `target` (blk.N.attn_v.weight, ...) under a type or a mixture."""
    if type_name not in GGUF_MIXES:
        return type_name
    parts = target.split(".")
    role = parts[2] if len(parts) > 2 and parts[2] in MIX_ROLES else None
    block = int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else 0
    return mixed_layer_type(type_name, role, block, n_blocks)


def _fit_here(weight: torch.Tensor, type_name: str, sparse: bool, name: str) -> GGUFBlocks:
    grid = gguf_grid(type_name)
    if sparse and not grid.holds_zero:
        raise PrunellmError(f"layer '{name}' is sparse and {grid.name} cannot keep its zeros; choose a type "
                            f"that holds zero (q4_0, q5_0, q8_0, q3_k, q6_k, q4_1, q5_1)")
    return fit_gguf_blocks(type_name, weight, keep_zero=sparse)


def _weight_of(module: Any, name: str) -> torch.Tensor:
    return _weight_view(module, name).to(device="cpu", dtype=torch.float32, copy=True)


def _weight_view(module: Any, name: str) -> torch.Tensor:
    from prunellm.layers import weight_view

    if module is None:
        raise PrunellmError(f"model has no layer '{name}'")
    return weight_view(module)


def _to_gguf_rows(t: torch.Tensor, target: str, arch: str, reader: Any) -> torch.Tensor:
    """Rows (dim 0) of a q/k weight (or its per-row params) in the order llama.cpp's converter
    writes them: for llama it interleaves the two rotary halves of every head."""
    if not _ROTARY_PERMUTED.get(arch) or not (".attn_q." in target or ".attn_k." in target):
        return t
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    if ".attn_k." in target:
        kv = reader.fields.get(f"{arch}.attention.head_count_kv")
        heads = int(kv.contents()) if kv is not None else heads
    rows = t.shape[0]
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _check_layout(weight: torch.Tensor, source_tensor: Any, name: str) -> None:
    """A compressed tensor keeps the signs of the one it replaces; a mis-mapped one does not.

    Signs, not a cosine: GPTQ with far fewer calibration tokens than inputs can move a few
    weights a long way (directions the calibration never saw), which sinks the cosine of a
    tensor that is laid out right; it keeps most signs. A wrong layout (rows of another tensor,
    a missing rotary permutation) agrees on half of them, as chance does.
    """
    from gguf.quants import dequantize

    original = torch.from_numpy(np.asarray(dequantize(source_tensor.data, source_tensor.tensor_type),
                                           dtype=np.float32)).reshape(weight.shape)
    both = (weight != 0) & (original != 0)
    agree = float((torch.sign(weight[both]) == torch.sign(original[both])).float().mean()) if both.any() else 1.0
    if not agree > MIN_SIGN_AGREEMENT:
        raise PrunellmError(f"layer '{name}' does not match GGUF tensor {source_tensor.name} "
                            f"({agree:.0%} of signs agree): the model was not loaded from this GGUF")


def _tensor_payload(tensor: Any, config: GGUFExportConfig) -> tuple[np.ndarray, Any]:
    """The bytes (or float array) to write for one source tensor no layer replaces, and its ggml type."""
    import gguf
    from gguf.quants import dequantize

    other = config.other_type
    if other == "keep" or len(tensor.shape) < 2:
        qtype = tensor.tensor_type
        data = tensor.data
        return np.ascontiguousarray(data), qtype if data.dtype == np.uint8 else None
    values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    if other in FLOAT_TYPES:
        return _float_payload(values, other)
    type_name = layer_gguf_type(other, values.shape[-1])
    blocks = fit_gguf_blocks(type_name, torch.from_numpy(values), keep_zero=False)
    weight = blocks.round(torch.from_numpy(values))
    return pack_gguf_blocks(blocks, weight), gguf.GGMLQuantizationType[type_name.upper()]


def _float_payload(values: np.ndarray, type_name: str) -> tuple[np.ndarray, Any]:
    import gguf
    from gguf.quants import quantize

    if type_name == "f32":
        return np.ascontiguousarray(values, dtype=np.float32), None
    if type_name == "f16":
        return values.astype(np.float16), None
    return quantize(values, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def _copy_metadata(reader: Any, writer: Any, main_type: str, extra: dict[str, str]) -> None:
    """Every key of the source (tokenizer included) except those the writer sets itself,
    with the file type updated to the main type of the file's layers."""
    import gguf

    file_type = _file_type(main_type)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE and file_type is not None:
            value = int(file_type)
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for key, value in extra.items():
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)


def _file_type(type_name: str) -> Any:
    import gguf

    if type_name == "keep":
        return None
    key = {"q3_k": "MOSTLY_Q3_K_S", "q4_k": "MOSTLY_Q4_K_S", "q5_k": "MOSTLY_Q5_K_S", "f32": "ALL_F32",
           "q6_k": "MOSTLY_Q6_K"}.get(type_name, f"MOSTLY_{type_name.upper()}")
    return getattr(gguf.LlamaFileType, key, None)

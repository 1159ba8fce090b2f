"""Write and read a model directory in prunellm's compressed format (docs/format.md).

The directory is a Hugging Face one (config.json, generation_config.json, tokenizer files,
report.json) whose weights are `compressed.safetensors` and `compression.json` instead of
`model.safetensors`:

- compressed linear layers as `<layer>.weight.<part>` tensors (layer.py's layouts);
- every other tensor (embeddings, norms, head, biases, layers left dense) under its own name,
  a tied tensor once;
- compression.json: format name and version, and each compressed layer's LayerSpec.

Written to a hidden sibling directory and renamed into place; refused before anything is
written when a layer cannot be stored losslessly.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.io.atomic import make_sibling_dir, write_json_atomic
from prunellm.io.dtypes import cast_checked
from prunellm.io.save import REPORT_FILE, check_output_dir, move_into_place
from prunellm.solvers.quant import QuantGrid

from .layer import DTYPES, CompressedWeight, LayerSpec, compress_weight, decompress_weight, dtype_name

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

FORMAT = "prunellm-compressed"
VERSION = 1
MANIFEST_FILE = "compression.json"
TENSORS_FILE = "compressed.safetensors"


@dataclass
class SizeSummary:
    """Bytes of the compressed layers and of the whole file, against the same in float16."""

    layers_bytes: int
    layers_fp16_bytes: int
    file_bytes: int
    model_fp16_bytes: int
    layouts: dict[str, int]  # layout -> number of layers

    def describe(self) -> str:
        kinds = ", ".join(f"{count} {layout}" for layout, count in sorted(self.layouts.items())) or "none"
        return (f"compressed layers {self.layers_bytes / 2**20:.1f} MiB vs {self.layers_fp16_bytes / 2**20:.1f} MiB "
                f"in fp16 ({self.layers_bytes / max(self.layers_fp16_bytes, 1):.2f}x; {kinds}); "
                f"file {self.file_bytes / 2**20:.1f} MiB vs {self.model_fp16_bytes / 2**20:.1f} MiB "
                f"({self.file_bytes / max(self.model_fp16_bytes, 1):.2f}x)")

    def to_json(self) -> dict:
        return dict(self.__dict__)


def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def save_dtype(model: nn.Module, requested: str = "auto") -> torch.dtype:
    """The dtype a compressed file stores values in: float16 for a float32 model ("auto": the
    half precision every runtime path takes), else the model's; or the one requested."""
    if requested == "auto":
        dtype = next(model.parameters()).dtype
        return torch.float16 if dtype == torch.float32 else dtype
    if requested not in DTYPES:
        raise PrunellmError(f"unknown save dtype {requested!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


def compress_layers(model: nn.Module, layer_names: list[str], grids: dict[str, QuantGrid],
                    nm: tuple[int, int] | None, dtype: torch.dtype) -> dict[str, CompressedWeight]:
    """Each named layer's weight (cast to dtype) in its smallest layout; a layer that would not
    shrink is left out. Refuses a layer whose compressed form would not decompress exactly."""
    from prunellm.layers import read_weight

    packed: dict[str, CompressedWeight] = {}
    for name in layer_names:
        weight = cast_checked(f"{name}.weight", read_weight(model.get_submodule(name)), dtype)  # (out, in)
        grid = grids.get(name)
        try:
            compressed = compress_weight(weight, grid, nm)
        except ValueError as error:
            raise PrunellmError(f"layer {name}: {error}") from None
        if compressed is None:
            continue
        if not torch.equal(decompress_weight(compressed), weight):
            # A grid's codes cannot be read back from weights rounded to a coarser dtype (8-bit
            # codes in bfloat16): storing them would silently change the model.
            raise PrunellmError(f"layer {name}: its {dtype_name(dtype)} weights are not exactly on its "
                                f"{grid.bits if grid else ''}-bit grid; save in float32 or float16 (--save-dtype)")
        packed[name] = compressed
    return packed


def save_compressed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path,
                    layer_names: list[str], *, grids: dict[str, QuantGrid] | None = None,
                    nm: tuple[int, int] | None = None, dtype: str = "auto", report: dict | None = None,
                    overwrite: bool = False) -> tuple[Path, SizeSummary]:
    """Write `model` to `out_dir` with the layers `layer_names` compressed; returns the path and
    what the format saved. grids: the min-max grid of each quantized layer (WalkResult.quant_grids);
    nm: the n:m pattern the layers were pruned to, if any."""
    out = Path(out_dir).expanduser()
    check_output_dir(out, overwrite)
    target = save_dtype(model, dtype)
    packed = compress_layers(model, layer_names, grids or {}, nm, target)
    tensors = _dense_tensors(model, packed, target)
    return write_compressed_dir(out, model, tokenizer, packed, tensors, target, report=report, overwrite=overwrite)


def write_compressed_dir(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None,
                         packed: dict[str, CompressedWeight], tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                         *, report: dict | None = None, overwrite: bool = False) -> tuple[Path, SizeSummary]:
    """The directory itself: `model`'s config (its weights are not read: it may be a meta-device
    skeleton), the compressed layers and the other tensors, staged beside `out` and renamed."""
    from safetensors.torch import save_file

    tensors = dict(tensors)
    for name, compressed in packed.items():
        for part, tensor in compressed.tensors.items():
            tensors[f"{name}.weight.{part}"] = tensor.contiguous().cpu()
    manifest = {"format": FORMAT, "version": VERSION, "dtype": dtype_name(dtype),
                "layers": {name: c.spec.to_json() for name, c in packed.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_sibling_dir(out, "tmp")
    try:
        config = model.config
        previous = getattr(config, "dtype", None)
        config.dtype = dtype_name(dtype)
        try:
            config.save_pretrained(staging)
        finally:
            config.dtype = previous
        generation = getattr(model, "generation_config", None)
        if generation is not None and getattr(model, "can_generate", lambda: False)():
            generation.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        save_file(tensors, str(staging / TENSORS_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
        write_json_atomic(staging / MANIFEST_FILE, manifest)
        summary = _summary(model, packed, staging / TENSORS_FILE)
        if report is not None:
            write_json_atomic(staging / REPORT_FILE, {**report, "compressed_format": summary.to_json()})
        move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved %s compressed to %s: %s", type(model).__name__, out, summary.describe())
    return out, summary


def _dense_tensors(model: nn.Module, packed: dict[str, CompressedWeight], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict but the compressed weights, floating ones cast to dtype,
    a tensor shared by several names (tied embeddings) kept under its first name only."""
    skip = {f"{name}.weight" for name in packed}
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name in skip or tensor.device.type == "meta":
            continue
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        tensors[name] = cast_checked(name, tensor.detach().cpu(), dtype).contiguous()
    return tensors


def _summary(model: nn.Module, packed: dict[str, CompressedWeight], file: Path) -> SizeSummary:
    layouts: dict[str, int] = {}
    for compressed in packed.values():
        layouts[compressed.spec.layout] = layouts.get(compressed.spec.layout, 0) + 1
    fp16_layers = sum(2 * c.spec.shape[0] * c.spec.shape[1] for c in packed.values())
    # Every parameter once (a tied one too) and the persistent buffers: shapes only, so that a
    # meta-device skeleton counts as its model.
    saved = set(model.state_dict())
    persistent = [buffer for name, buffer in model.named_buffers() if name in saved]
    fp16_model = sum(t.numel() * (2 if t.is_floating_point() else t.element_size())
                     for t in list(model.parameters()) + persistent)
    return SizeSummary(sum(c.nbytes for c in packed.values()), fp16_layers, file.stat().st_size, fp16_model, layouts)


@dataclass
class CompressedCheckpoint:
    """What a compressed directory holds: its manifest, its compressed layers and other tensors."""

    directory: Path
    dtype: torch.dtype
    layers: dict[str, CompressedWeight]
    tensors: dict[str, torch.Tensor]


def read_compressed(directory: str | Path) -> CompressedCheckpoint:
    """Read a directory written by `save_compressed`, refusing another format or version."""
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise PrunellmError(f"cannot read {manifest_path}: {error}") from None
    if manifest.get("format") != FORMAT:
        raise PrunellmError(f"{manifest_path} is not a {FORMAT} manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise PrunellmError(f"{manifest_path} has format version {manifest.get('version')}; this prunellm reads "
                            f"version {VERSION} (upgrade prunellm)")
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except Exception as error:  # OSError, or safetensors' own error for a corrupt header
        raise PrunellmError(f"cannot read {directory / TENSORS_FILE}: {error}") from None
    layers = {}
    for name, data in manifest["layers"].items():
        prefix = f"{name}.weight."
        parts = {key[len(prefix):]: tensors.pop(key) for key in list(tensors) if key.startswith(prefix)}
        if not parts:
            raise PrunellmError(f"{directory / TENSORS_FILE} has no tensors for compressed layer {name}")
        layers[name] = CompressedWeight(LayerSpec.from_json(data), parts)
    return CompressedCheckpoint(directory, DTYPES[manifest["dtype"]], layers, tensors)

"""Write a GPTQ-quantized model as a compressed-tensors "pack-quantized" checkpoint: the int4/int8
weight-only format vLLM serves (its WNA16 kernels) and transformers loads.

The packed layout, the config and their serialization come from the `compressed-tensors` package
(`pip install 'prunellm[deploy]'`), not from code here: the format is whatever that package and
vLLM agree on, and a hand-written copy of its bit packing would drift from it. prunellm hands
each layer's codes, scales and zero points to `PackedQuantizationCompressor`, unpacks the result
again to check it gives back exactly the intended weight, and writes the config with
`QuantizationConfig` and `ModelCompressor.update_config`.

The grids map without loss (compressed_tensors 0.20.1):
  prunellm:           w = scale * (code - zero), code and zero integers in [0, 2^b - 1]
  compressed-tensors: w = scale * (q - zp),      q and zp integers in [-2^(b-1), 2^(b-1) - 1]
                      (quantization/utils/helpers.py `calculate_range`; lifecycle/forward.py
                      `_dequantize`; pack_quantized/helpers.py `pack_to_int32` adds 2^(b-1)
                      back before packing, `unpack_from_int32` subtracts it)
so q = code - 2^(b-1) and zp = zero - 2^(b-1). A symmetric grid has zero = 2^(b-1), i.e. zp = 0,
which the format does not store. Groups are contiguous runs of inputs in both (no g_idx).

Scales are stored in the model's dtype, as the format's loaders allocate them
(lifecycle/initialize.py: scale dtype = weight dtype). A float32 model round-trips bit for bit.
In bfloat16 (float16) the rounded scales move a weight by at most one unit in its last place
(2^-7, 2^-10 of it) from prunellm's; measured on a tiny Llama at 4 and 8 bits, 8-23% of the
weights move, by 2^-10 to 2^-11 of themselves on average in bfloat16. The codes are prunellm's.

Loading: vLLM reads the directory as is. transformers 5 with compressed-tensors 0.20 loads a
symmetric export either way, but an asymmetric one (prunellm's default grids) only through its
dequantizing loader, `from_pretrained(out, quantization_config=CompressedTensorsConfig(
dequantize=True))`: its compressed loader builds the layers on the meta device, where the
package's packer leaves the zero points (R, G) where the file has them packed (R*bits/32, G),
and the load stops on a size mismatch.

What the format cannot hold is refused up front (`check_compressed_tensors`), before anything is
written: see its docstring.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.io.atomic import make_sibling_dir, write_json_atomic
from prunellm.io.gguf_source import clear_gguf_marks
from prunellm.io.grids import load_quant_grids
from prunellm.io.save import REPORT_FILE, check_output_dir, move_into_place
from prunellm.solvers.quant import QuantGrid

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

FORMAT = "pack-quantized"
# compressed-tensors packs 1 to 8 bits, but vLLM's WNA16 kernels (the point of this format)
# run only 4 and 8: a 3-bit export would load in transformers and fail in vLLM.
SUPPORTED_BITS = (4, 8)
# Sparsity test (see `check_compressed_tensors`), measured with round-to-nearest grids on every
# layer of four of SmolLM2-135M's blocks: on plain 4-bit grids (per row or per 64 inputs, sym or
# not) the zero code holds at most 2.0x the weights of the fuller code beside it, on 8-bit ones
# 1.2x; after 50% or 2:4 pruning 5x or more at 4 bits, and 100x or more at 8 bits (already at 10%).
ZERO_SPIKE = 3.0
MIN_SPARSE_FRACTION = 0.05  # fewer zeros than this is no sparsity worth keeping


def _require_package() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise PrunellmError("the compressed-tensors format needs the compressed-tensors package: "
                            "pip install 'prunellm[deploy]'") from None


def check_compressed_tensors_method(method: dict[str, Any]) -> None:
    """Refuse, before a prune, a method (its `Method.describe()`, or report.json's "method")
    whose result compressed-tensors cannot hold: one that prunes (sparsity > 0 or n:m), GGUF
    grids, or bits other than 4 and 8."""
    _require_package()
    name = method.get("method", "?")
    if method.get("nm") is not None or float(method.get("sparsity") or 0) > 0:
        raise PrunellmError(f"method {name!r} prunes, and compressed-tensors keeps no sparsity (its sparse formats "
                            "were removed): quantize only (gptq, or sparsity 0), or write safetensors instead")
    if method.get("gguf") is not None:
        raise PrunellmError(f"method {name!r} quantizes onto GGUF grids ({method['gguf']}): write gguf instead")
    bits = method.get("bits")
    if bits not in SUPPORTED_BITS:
        raise PrunellmError(f"method {name!r} with bits={bits} cannot be written as compressed-tensors: "
                            f"vLLM runs {' or '.join(map(str, SUPPORTED_BITS))}-bit weights only")


def check_compressed_tensors(model: nn.Module, grids: dict[str, QuantGrid], layer_names: list[str], *,
                             report: dict[str, Any] | None = None) -> None:
    """Refuse, with a one-line PrunellmError naming the layer, what one pack-quantized
    checkpoint cannot hold. layer_names: the layers the prune compressed (report.json's
    "layers"); grids: the grids they ended on.

    - Sparsity. The format keeps none (compressed-tensors dropped its sparse formats), so a
      pruned model would be written dense: no smaller, no faster, and the user who pruned would
      not be told. Refused: a report whose method prunes; a compressed layer without a grid
      (pruned, not quantized); a quantized layer whose zero code holds more than ZERO_SPIKE
      times the weights of the fuller code next to it (and over MIN_SPARSE_FRACTION of the
      layer). Rounding alone spreads weights smoothly over the codes around zero; pruning piles
      them onto zero (this also catches GPTQ run on an already-pruned model, whose report does
      not say it prunes). Low sparsity (~10-20% on 4-bit grids) hides inside the zero code and
      passes: such a layer is still exactly what prunellm computed, only dense.
    - Bits other than 4 and 8 (SUPPORTED_BITS), layers that are not nn.Linear (GPT-2's
      Conv1D), groups that do not tile the inputs, and a weight not on its grid (a stale grids
      file), which would not round-trip.
    - Different grids across layers: all quantized layers must share bits, sym and group_size.
      compressed-tensors could give each its own config group, but transformers' dequantizing
      loader decompresses every dense layer with the first group's scheme, and vLLM needs the
      layers it fuses (q/k/v, gate/up) to agree; prunellm's methods never mix them anyway.
    """
    _require_package()
    if report is not None:
        check_compressed_tensors_method(report.get("method", {}))
        if (report.get("allocation") or {}).get("targets"):
            raise PrunellmError("the report's prune allocated per-layer sparsities: compressed-tensors keeps no "
                                "sparsity; write safetensors instead")
    names = list(dict.fromkeys([*layer_names, *grids]))
    if not grids:
        raise PrunellmError("no quantized layers: compressed-tensors holds quantized weights; "
                            "write safetensors instead")
    first = next(iter(grids))
    for name in names:
        if name not in grids:
            raise PrunellmError(f"layer {name} was compressed but not quantized (pruned only): compressed-tensors "
                                "holds quantized layers and keeps no sparsity")
        _check_layer(model, name, grids[name])
        if _spec(grids[name]) != _spec(grids[first]):
            raise PrunellmError(f"layer {name} is on a {_describe(grids[name])} grid but {first} on "
                                f"{_describe(grids[first])}: one compressed-tensors export holds one grid")


def _spec(grid: QuantGrid) -> tuple[int, bool, int | None]:
    return grid.bits, grid.sym, grid.group_size


def _describe(grid: QuantGrid) -> str:
    groups = "per-row" if grid.group_size is None else f"g{grid.group_size}"
    return f"{grid.bits}-bit {groups} {'sym' if grid.sym else 'asym'}"


def _check_layer(model: nn.Module, name: str, grid: QuantGrid) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PrunellmError(f"the model has no layer {name} (grids from another model?)") from None
    if not isinstance(module, nn.Linear):
        raise PrunellmError(f"layer {name} is a {type(module).__name__}, and compressed-tensors packs nn.Linear "
                            "layers only")
    if grid.bits not in SUPPORTED_BITS:
        raise PrunellmError(f"layer {name} is quantized to {grid.bits} bits; compressed-tensors models run in vLLM "
                            f"at {' or '.join(map(str, SUPPORTED_BITS))} bits only")
    rows, cols = module.weight.shape
    groups = 1 if grid.group_size is None else cols // grid.group_size
    if (grid.group_size is not None and cols % grid.group_size) or tuple(grid.scale.shape) != (rows, groups) \
            or tuple(grid.zero.shape) != (rows, groups):
        raise PrunellmError(f"layer {name}: its grid ({tuple(grid.scale.shape)} scales, group_size "
                            f"{grid.group_size}) does not fit its ({rows}, {cols}) weight")
    offset = 2 ** (grid.bits - 1)
    if grid.sym and not bool((grid.zero == offset).all()):
        raise PrunellmError(f"layer {name}: a symmetric grid must have its zero point at {offset}")
    codes = layer_codes(grid, module.weight)
    if codes is None:
        raise PrunellmError(f"layer {name}: its weight is not on its quantization grid (a stale grids file?)")
    _check_not_sparse(name, codes, grid)


def layer_codes(grid: QuantGrid, weight: torch.Tensor) -> torch.Tensor | None:
    """The codes (R, C) uint8 whose scale * (code - zero), rounded to the weight's dtype, is the
    weight exactly; None when some weight is on no code of the grid.

    Not just QuantGrid.codes: a bfloat16 weight is scale * (code - zero) rounded to 8 significant
    bits, up to 2^-8 of itself off, and once |code - zero| passes 128 (8-bit grids) that rounding
    can exceed half a step, so round(weight / scale) lands on the code beside it."""
    weight = weight.detach().cpu()
    codes = grid.codes(weight).to(torch.int16)
    found = _dequantize(grid, codes).to(weight.dtype) == weight
    for step in (-1, 1):
        if bool(found.all()):
            break
        other = (codes + step).clamp(0, 2**grid.bits - 1)
        hit = ~found & (_dequantize(grid, other).to(weight.dtype) == weight)
        codes, found = torch.where(hit, other, codes), found | hit
    return codes.to(torch.uint8) if bool(found.all()) else None


def _dequantize(grid: QuantGrid, codes: torch.Tensor) -> torch.Tensor:
    """scale * (code - zero) in float32, the product the solvers write."""
    scale, zero = grid.expand(codes.shape[1])
    return scale.float() * (codes.float() - zero.float())


def _check_not_sparse(name: str, codes: torch.Tensor, grid: QuantGrid) -> None:
    _, zero = grid.expand(codes.shape[1])
    steps = codes.to(torch.int16) - zero.to(torch.int16)  # (R, C) signed distance from the zero code
    on_zero = int((steps == 0).sum())
    # The fuller neighbour, not their mean: a row whose zero point sits on the grid's edge (all
    # its weights of one sign) has a neighbour on one side only.
    beside = max(int((steps == -1).sum()), int((steps == 1).sum()))
    fraction = on_zero / steps.numel()
    if fraction > MIN_SPARSE_FRACTION and on_zero > ZERO_SPIKE * beside:
        ratio = f"{on_zero / beside:.0f}x" if beside else "all"
        raise PrunellmError(f"layer {name} looks pruned: {fraction:.0%} of its weights are zero, {ratio} those on "
                            "the codes beside zero; compressed-tensors keeps no sparsity (write safetensors instead)")


def _scheme(grid: QuantGrid):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    strategy = "channel" if grid.group_size is None else "group"
    args = QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.sym, strategy=strategy,
                            group_size=grid.group_size)
    return QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)


def _pack_layer(name: str, weight: torch.Tensor, grid: QuantGrid, scheme) -> dict[str, torch.Tensor]:
    """weight_packed, weight_scale, weight_shape (and weight_zero_point when asymmetric) of one
    layer, from the package's packer; checked by unpacking them again."""
    from compressed_tensors.compressors import PackedQuantizationCompressor

    codes = layer_codes(grid, weight)  # (R, C) uint8; checked not None by check_compressed_tensors
    offset = 2 ** (grid.bits - 1)
    scale = grid.scale.to(weight.dtype)  # (R, G): stored in the model's dtype, as the loaders expect
    zero_point = (grid.zero - offset).to(torch.int8)  # (R, G) signed
    # The packer quantizes the weight it is given with the scales it stores: hand it, in float32,
    # the weight those (possibly rounded) scales give with prunellm's codes, so that its
    # round(w / scale) + zp is exact and the codes are prunellm's at every dtype.
    on_stored_grid = _dequantize(QuantGrid(grid.bits, grid.sym, grid.group_size, scale, grid.zero), codes)
    state = {"weight": on_stored_grid, "weight_scale": scale, "weight_zero_point": zero_point}
    packed = PackedQuantizationCompressor.compress(state, scheme)
    unpacked = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]
    if not torch.equal(unpacked, on_stored_grid.to(weight.dtype)):
        raise PrunellmError(f"layer {name}: compressed-tensors did not pack it losslessly (a package version "
                            "this exporter does not know?)")
    return packed


def compressed_state_dict(model: nn.Module, grids: dict[str, QuantGrid]) -> dict[str, torch.Tensor]:
    """The model's state dict with each quantized layer's `weight` replaced by its packed tensors
    (tied tensors still shared, for save_pretrained to write once)."""
    state = model.state_dict()
    scheme = _scheme(next(iter(grids.values())))
    for name, grid in grids.items():
        weight = state.pop(f"{name}.weight")
        for key, tensor in _pack_layer(name, weight, grid, scheme).items():
            state[f"{name}.{key}"] = tensor
    return state


def quantization_config(model: nn.Module, grids: dict[str, QuantGrid]):
    """The compressed-tensors QuantizationConfig: one group targeting every Linear, minus the
    Linear layers left in float (lm_head, layers the prune skipped), as llm-compressor writes it."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    ignore = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in grids]
    return QuantizationConfig(config_groups={"group_0": _scheme(next(iter(grids.values())))}, format=FORMAT,
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore)


def save_compressed_tensors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    grids: dict[str, QuantGrid],
    out_dir: str | Path,
    *,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (quantized in memory by a prune; `grids` = WalkResult.quant_grids) as a
    compressed-tensors pack-quantized Hugging Face directory, with its tokenizer and
    report.json (when given), and return its path.

    vLLM (the quantization is read from config.json) and `AutoModelForCausalLM.from_pretrained`
    load it: int4 or int8 weights, per row or per group, with zero points unless the grid is
    symmetric (asymmetric ones load in transformers with `quantization_config=
    CompressedTensorsConfig(dequantize=True)`, see the module docstring). Everything else keeps
    the model's dtype. What it
    cannot hold is refused before anything is written (see `check_compressed_tensors`; the
    compressed layers are report["layers"], or the grids' layers without a report). The
    directory is built beside `out_dir` and renamed into place; with `overwrite` an existing
    one is replaced only once the new one is complete. The model is not changed (except that
    a GGUF-loaded one loses its quantizer marks, as with `save_model`).
    """
    out = Path(out_dir).expanduser()
    layer_names = [layer["name"] for layer in report["layers"]] if report and "layers" in report else list(grids)
    check_compressed_tensors(model, grids, layer_names, report=report)
    check_output_dir(out, overwrite)
    from compressed_tensors.compressors import ModelCompressor

    clear_gguf_marks(model)
    state = compressed_state_dict(model, grids)
    config = quantization_config(model, grids)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_sibling_dir(out, "tmp")
    try:
        model.save_pretrained(staging, state_dict=state)
        ModelCompressor(quantization_config=config).update_config(str(staging))  # adds quantization_config
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if report is not None:
            write_json_atomic(staging / REPORT_FILE, report)
        move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved %s as compressed-tensors (%s, %s) to %s", type(model).__name__, FORMAT,
             _describe(next(iter(grids.values()))), out)
    return out


def export_directory_to_compressed_tensors(directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert a directory written by `prunellm prune --out` (weights, quant_grids.safetensors,
    report.json) into a compressed-tensors directory at `out`; returns its path.

    The model is loaded in the dtype it was saved in, so the scales are stored in that dtype
    (see the module docstring for what bfloat16 costs). Without report.json, the grids file
    alone says which layers were compressed, and sparsity is judged from the weights.
    """
    from prunellm.io.dtypes import dtype_name, stored_dtype
    from prunellm.io.load import load_model

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise PrunellmError(f"not a directory: {directory}")
    report_path = directory / REPORT_FILE
    try:
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
    except (OSError, ValueError) as error:
        raise PrunellmError(f"cannot read {report_path}: {error}") from None
    grids = load_quant_grids(directory)
    if not grids:
        raise PrunellmError(f"{directory} has no quantization grids (quant_grids.safetensors): only a prune that "
                            "quantized (bits 4 or 8) can be written as compressed-tensors")
    _require_package()
    model, tokenizer = load_model(directory, dtype=dtype_name(stored_dtype(directory)))
    return save_compressed_tensors(model, tokenizer, grids, out, report=report, overwrite=overwrite)

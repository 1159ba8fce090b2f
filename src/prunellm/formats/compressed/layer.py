"""One linear layer's weight in prunellm's compressed format (docs/format.md), and back.

A layer is stored in one of three layouts, each optionally quantized:

- "quant"   dense, every weight as a packed integer code;
- "nm"      n:m sparse: the m - n kept values of every group of m inputs, and their positions;
- "bitmask" unstructured sparse: one bit per weight, and the non-zeros row after row.

A quantized value is scale * (code - zero) computed in float32 with the scale and zero point of
its row and group, then cast to the layer's dtype: the very operations of the solver's grid,
so that decompressing gives back exactly the weights prunellm produced. A layer that is neither
quantized nor sparse enough to gain stays a plain tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch

from prunellm.io.dtypes import DTYPES, dtype_name
from prunellm.solvers.quant import QuantGrid

from .packing import container_bits, index_bits, pack_bits, unpack_bits

LAYOUTS = ("quant", "nm", "bitmask")


@dataclass(frozen=True)
class LayerSpec:
    """What compression.json records of one compressed layer."""

    layout: str  # one of LAYOUTS
    shape: tuple[int, int]  # (out_features, in_features)
    dtype: str  # the weight's dtype, a key of DTYPES
    n: int | None = None  # n:m: zeros per group of m inputs
    m: int | None = None
    bits: int | None = None  # quantized: bits of a code (stored in container_bits(bits))
    group_size: int | None = None  # inputs per scale (None: one per row)
    sym: bool | None = None

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LayerSpec":
        return cls(**{**data, "shape": tuple(data["shape"])})


@dataclass
class CompressedWeight:
    spec: LayerSpec
    tensors: dict[str, torch.Tensor]  # part name ("values", "indices", "qweight", ...) -> tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of m consecutive inputs of every row holds at least n zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight == 0).reshape(rows, cols // m, m).sum(dim=-1)
    return bool((zeros >= n).all())


def compress_weight(weight: torch.Tensor, grid: QuantGrid | None = None,
                    nm: tuple[int, int] | None = None) -> CompressedWeight | None:
    """The compressed form of weight (R, C) in the smallest layout that holds it, or None when
    a plain tensor is as small (neither quantized nor sparse enough).

    grid: the min-max grid the weight lies on (a quantized layer). nm: the (n, m) pattern it
    was pruned to, stored as such when every group holds it (2:4 is also recognised unasked).
    """
    rows, cols = weight.shape
    dtype = dtype_name(weight.dtype)
    if dtype not in DTYPES:
        raise ValueError(f"cannot store {weight.dtype} weights (only {', '.join(DTYPES)})")
    quant = {}
    codes = None
    if grid is not None:
        quant = {"bits": grid.bits, "group_size": grid.group_size, "sym": grid.sym}
        codes = grid.codes(weight.to(torch.float32))  # (R, C) uint8
    for n, m in [nm] if nm is not None else [(2, 4)]:
        if satisfies_nm(weight, n, m):
            return _compress_nm(weight, codes, grid, LayerSpec("nm", (rows, cols), dtype, n, m, **quant))
    value_bits = container_bits(grid.bits) if grid is not None else weight.element_size() * 8
    nonzeros = int(torch.count_nonzero(weight))
    bitmask_bytes = rows * ((cols + 7) // 8) + 8 * (rows + 1) + (nonzeros * value_bits + 7) // 8
    if bitmask_bytes < rows * cols * value_bits // 8:
        return _compress_bitmask(weight, codes, grid, LayerSpec("bitmask", (rows, cols), dtype, **quant))
    if grid is None:
        return None
    spec = LayerSpec("quant", (rows, cols), dtype, **quant)
    return CompressedWeight(spec, {"qweight": pack_bits(codes, container_bits(grid.bits)), **_grid_tensors(grid)})


def _grid_tensors(grid: QuantGrid) -> dict[str, torch.Tensor]:
    return {"scales": grid.scale.to(torch.float32).contiguous(), "zeros": grid.zero.to(torch.uint8).contiguous()}


def _compress_nm(weight: torch.Tensor, codes: torch.Tensor | None, grid: QuantGrid | None,
                 spec: LayerSpec) -> CompressedWeight:
    rows, cols = weight.shape
    n, m = spec.n, spec.m
    kept = m - n
    groups = weight.reshape(rows, cols // m, m)  # (R, C/m, m)
    position = torch.arange(m, device=weight.device)
    # The non-zeros first, then the earliest zeros to fill the group's m - n slots; in order.
    rank = (groups != 0).to(torch.int64) * m + (m - 1 - position)
    slots = rank.topk(kept, dim=-1).indices.sort(dim=-1).values  # (R, C/m, kept)
    tensors = {"indices": pack_bits(slots.reshape(rows, -1), index_bits(m))}
    if codes is None:
        tensors["values"] = groups.gather(-1, slots).reshape(rows, -1).contiguous()
    else:
        kept_codes = codes.reshape(rows, cols // m, m).gather(-1, slots).reshape(rows, -1)
        tensors["qvalues"] = pack_bits(kept_codes, container_bits(grid.bits))
        tensors.update(_grid_tensors(grid))
    return CompressedWeight(spec, tensors)


def _compress_bitmask(weight: torch.Tensor, codes: torch.Tensor | None, grid: QuantGrid | None,
                      spec: LayerSpec) -> CompressedWeight:
    mask = weight != 0  # (R, C)
    counts = mask.sum(dim=1)
    offsets = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
    offsets[1:] = counts.cumsum(0)
    tensors = {"mask": pack_bits(mask, 1), "row_offsets": offsets}
    if codes is None:
        tensors["values"] = weight[mask].contiguous()  # row after row
    else:
        tensors["qvalues"] = pack_bits(codes[mask], container_bits(grid.bits))
        tensors.update(_grid_tensors(grid))
    return CompressedWeight(spec, tensors)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """float32 values of codes (R, C) whose inputs form G = scales.shape[1] equal groups."""
    rows, cols = codes.shape
    groups = scales.shape[1]
    grouped = codes.reshape(rows, groups, cols // groups).to(torch.float32)  # (R, G, C/G)
    return (scales[..., None] * (grouped - zeros.to(torch.float32)[..., None])).reshape(rows, cols)


def decompress_weight(packed: CompressedWeight) -> torch.Tensor:
    """The (R, C) weight, in its dtype, exactly as it was compressed.

    Every step is an elementwise or masked operation on the packed tensors (no index tensors
    as large as the weight), so that expanding a layer per call stays affordable on a CPU.
    """
    spec, t = packed.spec, packed.tensors
    rows, cols = spec.shape
    dtype = DTYPES[spec.dtype]
    if spec.layout == "quant":
        codes = unpack_bits(t["qweight"], container_bits(spec.bits), cols)
        return dequantize_rows(codes, t["scales"], t["zeros"]).to(dtype)
    if spec.layout == "nm":
        return _expand_nm(spec, t, dtype)
    if spec.layout == "bitmask":
        mask = unpack_bits(t["mask"], 1, cols).bool()  # (R, C)
        if not spec.quantized:
            return torch.zeros(rows, cols, dtype=dtype, device=mask.device).masked_scatter_(mask, t["values"])
        # Every weight at its zero point (value 0), the stored codes where the mask says, row after row.
        groups = t["scales"].shape[1]
        codes = t["zeros"][:, :, None].expand(rows, groups, cols // groups).reshape(rows, cols).clone()
        stored = unpack_bits(t["qvalues"], container_bits(spec.bits), int(t["row_offsets"][-1]))
        codes.masked_scatter_(mask, stored)
        return dequantize_rows(codes, t["scales"], t["zeros"]).to(dtype)
    raise ValueError(f"unknown layout {spec.layout!r}")


def _expand_nm(spec: LayerSpec, t: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    rows, cols = spec.shape
    m, kept = spec.m, spec.m - spec.n
    slots = cols // m * kept
    position = unpack_bits(t["indices"], index_bits(m), slots).reshape(rows, cols // m, kept)  # (R, C/m, k)
    if spec.quantized:
        codes = unpack_bits(t["qvalues"], container_bits(spec.bits), slots)
        if (spec.group_size or cols) % m == 0:  # a group of inputs holds whole n:m groups: a run of slots
            values = dequantize_rows(codes, t["scales"], t["zeros"])
        else:  # groups cut n:m groups: each slot's group from its column
            column = torch.arange(slots, device=codes.device) // kept * m + position.reshape(rows, slots)
            group = column // spec.group_size
            zeros = t["zeros"].to(torch.float32)
            values = t["scales"].gather(1, group) * (codes.to(torch.float32) - zeros.gather(1, group))
    else:
        values = t["values"]
    # Placed in float32 (the CPU's fast path for scatter) and rounded once after: the same values.
    dense = torch.zeros(rows, cols // m, m, dtype=values.dtype, device=values.device)
    dense.scatter_(2, position.to(torch.int64), values.reshape(rows, cols // m, kept))
    return dense.reshape(rows, cols).to(dtype)


def bitmask_as_quant(packed: CompressedWeight) -> CompressedWeight:
    """A quantized bitmask layer in the dense "quant" layout, losslessly: a pruned weight is
    the code of its zero point. More bytes, but the layout GPU decode kernels read."""
    spec, t = packed.spec, packed.tensors
    if spec.layout != "bitmask" or not spec.quantized:
        raise ValueError("only a quantized bitmask layer converts to the quant layout")
    rows, cols = spec.shape
    group = torch.arange(cols, device=t["mask"].device) // (spec.group_size or cols)
    codes = t["zeros"][:, group].clone()  # (R, C): every weight at its zero point
    mask = unpack_bits(t["mask"], 1, cols).bool()
    codes[mask] = unpack_bits(t["qvalues"], container_bits(spec.bits), int(t["row_offsets"][-1]))
    tensors = {"qweight": pack_bits(codes, container_bits(spec.bits)), "scales": t["scales"], "zeros": t["zeros"]}
    return CompressedWeight(LayerSpec("quant", spec.shape, spec.dtype, bits=spec.bits, group_size=spec.group_size,
                                      sym=spec.sym), tensors)


def slice_rows(packed: CompressedWeight, start: int, stop: int) -> CompressedWeight:
    """Rows start..stop-1 of a compressed weight, as a compressed weight of their own: views of
    the packed tensors, except a bitmask's codes when the slice starts inside a byte."""
    spec, t = packed.spec, packed.tensors
    rows, cols = spec.shape
    if not 0 <= start < stop <= rows:
        raise ValueError(f"rows {start}..{stop} outside 0..{rows}")
    sliced = dataclasses.replace(spec, shape=(stop - start, cols))
    if spec.layout != "bitmask":
        return CompressedWeight(sliced, {part: tensor[start:stop] for part, tensor in t.items()})
    offsets = t["row_offsets"][start:stop + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    parts = {"mask": t["mask"][start:stop], "row_offsets": offsets - first}
    if not spec.quantized:
        parts["values"] = t["values"][first:last]
        return CompressedWeight(sliced, parts)
    bits = container_bits(spec.bits)
    lead = first * bits % 8 // bits  # values of the previous row sharing the first byte
    stored = t["qvalues"][first * bits // 8:(last * bits + 7) // 8]
    if lead:
        stored = pack_bits(unpack_bits(stored, bits, lead + last - first)[lead:], bits)
    parts.update(qvalues=stored, scales=t["scales"][start:stop], zeros=t["zeros"][start:stop])
    return CompressedWeight(sliced, parts)

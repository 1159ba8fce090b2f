"""A compressed layer's parts, checked and repacked at load into the one layout the native CPU
kernels walk (runtime/native/csrc/kernels.h).

Every layout becomes rows of `cols_pad` columns (C rounded up to 64) with

- a mask, one bit per weight in 64-bit words, where a value is stored (none for "quant": every
  column is). An n:m layer's kept slots become mask bits: 2:4 costs 4 bits per 4 weights as
  positions or as a mask, and a mask needs no position decoding, so one kernel reads both;
- the stored values row after row, as stored (float32, float16, bfloat16), or their codes
  packed in their container, every row starting on a whole byte (the file packs the codes of
  a bitmask layer across rows; a byte-aligned row start lets a thread begin at any row);
- scales float32 (R, G) and zero points uint8 (R, G) for codes, as the file stores them (a
  float32 copy of the zero points was a quarter of a 4-bit layer's non-code bytes).

Buffers the kernels load 16 values at a time from carry 64 bytes of tail padding, so that the
last row's last load stays inside the buffer. Nothing here imports the format's own modules:
the spec is read by attribute (layout, shape, dtype, n, m, bits, group_size) and the parts
from a dict, so this keeps working wherever the format's code lives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from prunellm.errors import PrunellmError

FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KIND = {"float32": 0, "float16": 1, "bfloat16": 2}  # PnlValueKind of stored floats; also the rounding dtype
CODES = 3
TAIL = 64  # bytes of padding after every buffer a kernel loads from
BAND_CODES = 1 << 22  # codes placed at once when rows are repacked (32 MiB of int64 positions)


@dataclass
class KernelLayout:
    """The repacked parts, with the fields of PnlWeight."""

    rows: int
    cols: int
    cols_pad: int
    value_kind: int
    code_bits: int
    weight_dtype: int
    group_size: int
    groups: int
    mask: torch.Tensor | None  # int64 (R, cols_pad / 64) or None
    row_start: torch.Tensor  # int64 (R + 1)
    values: torch.Tensor  # stored values or packed codes, flat, with TAIL bytes after
    scales: torch.Tensor | None  # float32 (R, G)
    zeros: torch.Tensor | None  # uint8 (R, G)

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: the parts, not the padding."""
        parts = [self.mask, self.row_start, self.scales, self.zeros]
        return sum(t.numel() * t.element_size() for t in parts if t is not None) + self.value_bytes

    @property
    def resident_bytes(self) -> int:
        """Bytes the buffers hold, padding included."""
        parts = [self.mask, self.row_start, self.values, self.scales, self.zeros]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    value_bytes: int = 0
    even_steps: bool = False  # every 64-column step of a row holds an even number of codes


def container_bits(bits: int) -> int:
    for size in (1, 2, 4, 8):
        if bits <= size:
            return size
    raise PrunellmError(f"no container holds {bits}-bit codes (8 at most)")


def index_bits(m: int) -> int:
    return container_bits(max(1, math.ceil(math.log2(m))))


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """uint8 (..., bytes) of `bits`-bit values, first in the lowest bits -> uint8 (..., n)."""
    if bits == 8:
        return packed[..., :n]
    per_byte = 8 // bits
    fields = [(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per_byte)]
    return torch.stack(fields, dim=-1).reshape(*packed.shape[:-1], -1)[..., :n]


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (N,) with N a multiple of 8 // bits -> uint8 (N * bits / 8,)."""
    if bits == 8:
        return values
    grouped = values.reshape(-1, 8 // bits)  # (N * bits / 8, 8 / bits)
    packed = grouped[:, 0].clone()  # uint8 throughout: no int32 copies of a large layer's codes
    for j in range(1, grouped.shape[1]):
        packed |= grouped[:, j] << (j * bits)
    return packed


def build(spec: Any, tensors: dict[str, torch.Tensor]) -> KernelLayout:
    """Check a layer's parts against its spec (one-line PrunellmError naming the problem) and
    repack them for the kernels."""
    rows, cols = _shape(spec)
    if spec.dtype not in FLOAT_DTYPES:
        raise PrunellmError(f"weight dtype {spec.dtype!r} is not one of {', '.join(FLOAT_DTYPES)}")
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            raise PrunellmError(f"part {name!r} is not a CPU tensor")
    quantized = spec.bits is not None
    cols_pad = -(-cols // 64) * 64
    if spec.layout == "bitmask":
        mask, counts, stored = _bitmask(spec, tensors, rows, cols, quantized)
    elif spec.layout == "nm":
        mask, counts, stored = _nm(spec, tensors, rows, cols, quantized)
    elif spec.layout == "quant":
        if not quantized:
            raise PrunellmError("a 'quant' layer needs bits")
        bits = container_bits(spec.bits)
        qweight = _part(tensors, "qweight", torch.uint8, (rows, -(-cols * bits // 8)))
        if cols == cols_pad:  # the file's rows are the kernels' rows already: no unpacking
            stored = qweight.reshape(-1)
        else:
            stored = torch.nn.functional.pad(unpack(qweight, bits, cols), (0, cols_pad - cols)).reshape(-1)
        mask, counts = None, torch.full((rows,), cols_pad, dtype=torch.int64)
    else:
        raise PrunellmError(f"unknown layout {spec.layout!r}")
    even = False
    if quantized and mask is not None and container_bits(spec.bits) == 4 and not cols % (spec.group_size or cols):
        mask, counts, stored, even = _even_steps(spec, tensors, mask, counts, stored)
    layout = KernelLayout(rows, cols, cols_pad, KIND[spec.dtype], 0, KIND[spec.dtype], cols, 1,
                          None if mask is None else _mask_words(mask, cols_pad), torch.empty(0), torch.empty(0),
                          None, None)
    layout.even_steps = even
    if quantized:
        _codes(layout, spec, tensors, counts, stored, packed=spec.layout == "quant" and cols == cols_pad)
    else:
        layout.row_start = _starts(counts)
        layout.values = _with_tail(stored)
        layout.value_bytes = stored.numel() * stored.element_size()
    return layout


def _shape(spec: Any) -> tuple[int, int]:
    shape = tuple(spec.shape)
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise PrunellmError(f"layer shape {shape} is not (out_features, in_features) of positive sizes")
    return shape


def _part(tensors: dict[str, torch.Tensor], name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in tensors:
        raise PrunellmError(f"part {name!r} is missing")
    tensor = tensors[name]
    if tensor.dtype != dtype:
        raise PrunellmError(f"part {name!r} is {tensor.dtype}, expected {dtype}")
    if tuple(tensor.shape) != shape:
        raise PrunellmError(f"part {name!r} has shape {tuple(tensor.shape)}, expected {shape} "
                            "(truncated or mismatched)")
    return tensor.contiguous()


def _bitmask(spec: Any, t: dict[str, torch.Tensor], rows: int, cols: int,
             quantized: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = unpack(_part(t, "mask", torch.uint8, (rows, -(-cols // 8))), 1, cols).bool()  # (R, C)
    offsets = _part(t, "row_offsets", torch.int64, (rows + 1,))
    counts = mask.sum(dim=1)
    if int(offsets[0]) != 0 or not torch.equal(offsets[1:] - offsets[:-1], counts):
        raise PrunellmError("part 'row_offsets' does not match the mask's count of stored values per row")
    nnz = int(offsets[-1])
    if quantized:
        bits = container_bits(spec.bits)
        stored = unpack(_part(t, "qvalues", torch.uint8, (-(-nnz * bits // 8),)), bits, nnz)
    else:
        stored = _part(t, "values", FLOAT_DTYPES[spec.dtype], (nnz,))
    return mask, counts, stored


def _nm(spec: Any, t: dict[str, torch.Tensor], rows: int, cols: int,
        quantized: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, m = spec.n, spec.m
    if not (isinstance(n, int) and isinstance(m, int) and 0 <= n < m <= 256) or cols % m:
        raise PrunellmError(f"n:m {n}:{m} does not fit a layer of {cols} inputs")
    kept = m - n
    slots = cols // m * kept
    ib = index_bits(m)
    position = unpack(_part(t, "indices", torch.uint8, (rows, -(-slots * ib // 8))), ib, slots)
    position = position.to(torch.int64).reshape(rows, cols // m, kept)
    if bool((position >= m).any()) or bool((position[..., 1:] <= position[..., :-1]).any()):
        raise PrunellmError(f"part 'indices' holds positions that are not increasing within 0..{m - 1}")
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(2, position, True).reshape(rows, cols)
    if quantized:
        bits = container_bits(spec.bits)
        stored = unpack(_part(t, "qvalues", torch.uint8, (rows, -(-slots * bits // 8))), bits, slots)
    else:
        stored = _part(t, "values", FLOAT_DTYPES[spec.dtype], (rows, slots))
    return mask, torch.full((rows,), slots, dtype=torch.int64), stored.reshape(-1)


def _even_steps(spec: Any, t: dict[str, torch.Tensor], mask: torch.Tensor, counts: torch.Tensor,
                codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """A masked layer of 4-bit codes with every 64-column step holding an even number of codes,
    so that each step's codes start on a whole byte (the vdpbf16ps kernel then loads them without
    a half-byte shift): a step with an odd number stores one more column, its first without a
    value, with the group's zero point as its code. Its weight is scale * (zero - zero) = 0,
    what the format's decompression gives the column (it stores a pruned weight as the zero
    point's code), so every expansion and product is unchanged; the codes grow by half a code a
    step on average (2 bits in 64 weights). Returns mask (R, C), counts (R,), codes (N,) and
    whether every step is even; unchanged and False where a step has no column to spare, a zero
    point is not a 4-bit code or a scale is not finite (its zero weight would be NaN)."""
    rows, cols = mask.shape
    cols_pad = -(-cols // 64) * 64
    steps = torch.nn.functional.pad(mask, (0, cols_pad - cols)).view(rows, -1, 64)  # (R, S, 64)
    odd = steps.sum(dim=2) % 2 == 1  # (R, S)
    if not bool(odd.any()):
        return mask, counts, codes, True
    spare = ~torch.nn.functional.pad(mask, (0, cols_pad - cols), value=True).view(rows, -1, 64)  # real columns only
    if bool((odd & ~spare.any(dim=2)).any()):
        return mask, counts, codes, False
    row, step = odd.nonzero(as_tuple=True)  # (K,) each, row-major: columns in order within a row
    col = step * 64 + spare[row, step].to(torch.uint8).argmax(dim=1)  # (K,) the first spare column
    groups = cols // (spec.group_size or cols)
    group = col // (spec.group_size or cols)
    zero = _part(t, "zeros", torch.uint8, (rows, groups))[row, group]  # (K,)
    scale = _part(t, "scales", torch.float32, (rows, groups))[row, group]
    if bool((zero > 15).any()) or not bool(torch.isfinite(scale).all()):
        return mask, counts, codes, False
    grown = mask.clone()
    grown[row, col] = True
    was_stored = mask[grown]  # (N + K,) which of the new stored columns held a code
    grown_codes = torch.empty(was_stored.numel(), dtype=torch.uint8)
    grown_codes[was_stored] = codes
    grown_codes[~was_stored] = zero  # the added columns in row-major order, as `row, col` lists them
    return grown, counts + odd.sum(dim=1), grown_codes, True


def _codes(layout: KernelLayout, spec: Any, t: dict[str, torch.Tensor], counts: torch.Tensor,
           codes: torch.Tensor, packed: bool = False) -> None:
    """Codes (N,) of rows of `counts` codes, repacked with each row starting on a whole byte
    (`packed`: `codes` are those bytes already)."""
    rows, cols = layout.rows, layout.cols
    if not isinstance(spec.bits, int) or not 1 <= spec.bits <= 8:
        raise PrunellmError(f"bits {spec.bits!r} is not in 1..8")
    group_size = spec.group_size or cols
    if cols % group_size:
        raise PrunellmError(f"group size {group_size} does not divide the layer's {cols} inputs")
    groups = cols // group_size
    scales = _part(t, "scales", torch.float32, (rows, groups))
    zeros = _part(t, "zeros", torch.uint8, (rows, groups))
    bits = container_bits(spec.bits)
    per_byte = 8 // bits
    starts = _starts(-(-counts // per_byte) * per_byte)
    if not packed:
        codes = _pack_rows(codes, counts, starts, bits)
    layout.value_kind, layout.code_bits = CODES, bits
    layout.group_size, layout.groups = group_size, groups
    layout.row_start, layout.values, layout.value_bytes = starts, _with_tail(codes), codes.numel()
    # Copies, not views of the parts: the parts may be a memory-mapped file the caller releases.
    layout.scales, layout.zeros = scales.clone(), zeros.clone()


def _pack_rows(codes: torch.Tensor, counts: torch.Tensor, starts: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 (N,), rows of `counts` codes one after another -> packed bytes with row r's
    codes from code `starts[r]` (every row padded to whole bytes). Placed in bands of rows of
    about BAND_CODES codes: the positions are int64, eight bytes per code of the band."""
    per_byte = 8 // bits
    code_starts = _starts(counts)
    if torch.equal(code_starts, starts):  # every row fills whole bytes
        return pack(codes, bits)
    out = torch.empty(int(starts[-1]) // per_byte, dtype=torch.uint8)
    rows, first = counts.numel(), 0
    while first < rows:
        last = int(torch.searchsorted(code_starts, code_starts[first] + BAND_CODES, right=True)) - 1
        last = min(max(last, first + 1), rows)
        band = counts[first:last]
        c0, c1, p0, p1 = (int(v) for v in (code_starts[first], code_starts[last], starts[first], starts[last]))
        row = torch.repeat_interleave(torch.arange(last - first), band)  # (codes in the band,)
        within = torch.arange(c1 - c0) - (code_starts[first:last] - c0).repeat_interleave(band)
        placed = torch.zeros(p1 - p0, dtype=torch.uint8)
        placed[(starts[first:last] - p0)[row] + within] = codes[c0:c1]
        out[p0 // per_byte:p1 // per_byte] = pack(placed, bits)
        first = last
    return out


def _starts(counts: torch.Tensor) -> torch.Tensor:
    starts = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    starts[1:] = counts.cumsum(0)
    return starts


def _mask_words(mask: torch.Tensor, cols_pad: int) -> torch.Tensor:
    """bool (R, C) -> int64 (R, cols_pad / 64): bit c % 64 of word c // 64 (little-endian bytes)."""
    padded = torch.nn.functional.pad(mask, (0, cols_pad - mask.shape[1])).to(torch.uint8)
    return pack(padded.reshape(-1), 1).reshape(mask.shape[0], -1).view(torch.int64).contiguous()


def _with_tail(flat: torch.Tensor) -> torch.Tensor:
    """A flat copy of `flat` with TAIL bytes of zeros after it (the kernels' loads run past the end)."""
    extra = -(-TAIL // flat.element_size())
    out = torch.zeros(flat.numel() + extra, dtype=flat.dtype)
    out[:flat.numel()] = flat.reshape(-1)
    return out

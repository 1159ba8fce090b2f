"""Small integers packed into bytes: the bit layout of prunellm's compressed format.

Values of `bits` bits (1, 2, 4 or 8: a "container") are packed along the last dimension,
8 // bits to a byte, the first value in the lowest bits: value j of a row sits in byte
j * bits // 8 at bit offset (j * bits) % 8. A row whose length is not a multiple of
8 // bits is padded with zeros to a whole byte.
"""

from __future__ import annotations

import math

import torch

CONTAINERS = (1, 2, 4, 8)


def container_bits(bits: int) -> int:
    """The smallest container (1, 2, 4 or 8 bits) holding `bits`-bit values."""
    for size in CONTAINERS:
        if bits <= size:
            return size
    raise ValueError(f"no container holds {bits}-bit values (8 at most)")


def index_bits(m: int) -> int:
    """Container bits of a position inside a group of m (2:4 -> 2, 4:8 -> 4, 2:16 -> 4)."""
    return container_bits(max(1, math.ceil(math.log2(m))))


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """values (..., N) integers in [0, 2^bits) -> uint8 (..., ceil(N * bits / 8))."""
    if bits not in CONTAINERS:
        raise ValueError(f"bits must be one of {CONTAINERS}, got {bits}")
    values = values.to(torch.uint8)
    if bits == 8:
        return values.contiguous()
    per_byte = 8 // bits
    n = values.shape[-1]
    pad = (-n) % per_byte
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    grouped = values.reshape(*values.shape[:-1], -1, per_byte)  # (..., bytes, per_byte)
    # uint8 shifts and ORs, one slice per position in the byte: no wider integer copies (a
    # vocabulary-sized head's codes would make gigabytes of int32 temporaries)
    packed = grouped[..., 0].clone()  # (..., bytes)
    for j in range(1, per_byte):
        packed |= grouped[..., j] << (j * bits)
    return packed


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 (..., bytes) -> uint8 (..., n)."""
    if bits not in CONTAINERS:
        raise ValueError(f"bits must be one of {CONTAINERS}, got {bits}")
    if bits == 8:
        return packed[..., :n]
    per_byte = 8 // bits
    # uint8 shifts and masks, one slice per position in the byte: no wider integer copies
    mask = (1 << bits) - 1
    values = torch.stack([(packed >> (j * bits)) & mask for j in range(per_byte)], dim=-1)  # (..., bytes, per_byte)
    return values.reshape(*packed.shape[:-1], -1)[..., :n]

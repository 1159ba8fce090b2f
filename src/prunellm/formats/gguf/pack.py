"""Pack a layer on a GGUF grid into the bytes of its GGUF type.

The `gguf` package's quantizers compute their own scales from float weights; the solver has
already chosen every block's scale and every integer, so the bytes are laid out here from
those, following the block layouts of ggml (the `gguf` package's dequantizers read them back:
the tests check every type bit for bit).
"""

from __future__ import annotations

import numpy as np
import torch

from prunellm.solvers.gguf_grids import GGUFBlocks


def pack_gguf_blocks(blocks: GGUFBlocks, weight: torch.Tensor) -> np.ndarray:
    """The GGUF bytes of weight (R, C), which lies on `blocks`' grid: uint8 (R, bytes per row)."""
    grid = blocks.grid
    rows, cols = weight.shape
    codes = blocks.codes(weight).cpu().numpy().astype(np.int32).reshape(-1, grid.block)  # (N, block)
    params = blocks.params.reshape(-1, grid.n_params).cpu().numpy()  # (N, P)
    packed = _PACKERS[grid.name](codes, params)  # (N, type_size)
    return np.ascontiguousarray(packed.reshape(rows, -1))


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    """(N,) float32 holding fp16 values -> (N, 2) little-endian bytes."""
    return values.astype("<f2").reshape(-1, 1).view(np.uint8)


def _nibbles(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low & 0x0F).astype(np.uint8) | ((high & 0x0F).astype(np.uint8) << 4)


def _pack_32(codes: np.ndarray) -> np.ndarray:
    """The 16 bytes of a 32-code block: code j in the low nibble, code j + 16 in the high."""
    return _nibbles(codes[:, :16], codes[:, 16:])


def _high_bits(codes: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 codes, as a little-endian uint32 (4 bytes)."""
    return np.packbits(((codes >> 4) & 1).astype(np.uint8), axis=-1, bitorder="little")


def _q8_0(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), codes.astype(np.int8).view(np.uint8)], axis=1)


def _q4_0(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), _pack_32(codes + 8)], axis=1)


def _q5_0(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    q = codes + 16
    return np.concatenate([_fp16_bytes(params[:, 0]), _high_bits(q), _pack_32(q)], axis=1)


def _q4_1(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), _fp16_bytes(params[:, 1]), _pack_32(codes)], axis=1)


def _q5_1(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), _fp16_bytes(params[:, 1]), _high_bits(codes),
                           _pack_32(codes)], axis=1)


def _k_scales(params: np.ndarray) -> np.ndarray:
    """The 12 bytes of q4_k's and q5_k's eight 6-bit sub-block scales and mins."""
    sc = params[:, 2:10].astype(np.uint8)  # (N, 8) 6-bit sub-block scales
    mn = params[:, 10:18].astype(np.uint8)  # (N, 8) 6-bit sub-block mins
    # Sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins);
    # sub-blocks 4-7 split: low 4 bits in bytes 8-11, high 2 bits on top of bytes 0-7.
    return np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
    ], axis=1)


def _k_low_nibbles(codes: np.ndarray) -> np.ndarray:
    """Each 64 inputs: byte b holds input b (low nibble) and input b + 32 (high nibble)."""
    chunks = codes.reshape(codes.shape[0], 4, 2, 32)
    return _nibbles(chunks[:, :, 0], chunks[:, :, 1]).reshape(codes.shape[0], 128)


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """One bit of each of 256 inputs, (N, 256) of 0/1, as 32 bytes: bit i of byte k is input 32·i + k."""
    planes = bits.reshape(bits.shape[0], 8, 32).astype(np.uint8)  # (N, bit i, byte k)
    return np.bitwise_or.reduce(planes << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)


def _q4_k(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), _fp16_bytes(params[:, 1]), _k_scales(params),
                           _k_low_nibbles(codes)], axis=1)


def _q5_k(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return np.concatenate([_fp16_bytes(params[:, 0]), _fp16_bytes(params[:, 1]), _k_scales(params),
                           _bit_planes((codes >> 4) & 1), _k_low_nibbles(codes & 0x0F)], axis=1)


def _q3_k(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    n = codes.shape[0]
    u = codes + 4  # (N, 256) in [0, 7]
    hmask = _bit_planes(u >> 2)  # the third bit of every input
    # Low 2 bits: input 128·h + 32·s + k in bits 2s, 2s+1 of byte 32·h + k.
    low = (u & 3).reshape(n, 2, 4, 32).astype(np.uint8)
    qs = np.bitwise_or.reduce(low << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2).reshape(n, 64)
    # Sixteen 6-bit scales stored + 32: low 4 bits of j and j + 8 share byte j; the high 2 bits
    # of scale 4·s + i sit at bits 2s, 2s+1 of byte 8 + i.
    v = (params[:, 1:17] + 32).astype(np.uint8)  # (N, 16)
    low_scales = (v[:, :8] & 0x0F) | ((v[:, 8:] & 0x0F) << 4)
    high = ((v >> 4) & 0x03).reshape(n, 4, 4)  # (N, s, i)
    high_scales = np.bitwise_or.reduce(high << (2 * np.arange(4, dtype=np.uint8))[None, :, None], axis=1)
    return np.concatenate([hmask, qs, low_scales, high_scales, _fp16_bytes(params[:, 0])], axis=1)


def _q6_k(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    n = codes.shape[0]
    q = (codes + 32).reshape(n, 2, 4, 32)  # two halves of 128 inputs, four runs of 32 each
    # Low 4 bits: byte k of a half's 64 holds inputs k (low) and k + 64 (high nibble).
    low = q.reshape(n, 2, 2, 64)
    ql = _nibbles(low[:, :, 0], low[:, :, 1]).reshape(n, 128)
    # High 2 bits: byte k of a half's 32 holds inputs k, k + 32, k + 64, k + 96 at bits 0, 2, 4, 6.
    top = (q >> 4) & 0x03
    qh = (top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).astype(np.uint8)
    scales = params[:, 1:17].astype(np.int8).view(np.uint8)
    return np.concatenate([ql, qh.reshape(n, 64), scales, _fp16_bytes(params[:, 0])], axis=1)


_PACKERS = {"q8_0": _q8_0, "q4_0": _q4_0, "q5_0": _q5_0, "q4_1": _q4_1, "q5_1": _q5_1, "q3_k": _q3_k,
            "q4_k": _q4_k, "q5_k": _q5_k, "q6_k": _q6_k}

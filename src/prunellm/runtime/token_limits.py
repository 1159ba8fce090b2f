"""Tokens per call up to which a CPU layer runs on the native kernels (decode), above which it
takes torch's dense product (prefill).

A kernel reads the weight once for all the call's tokens, so it wins while a call is bound by
the weight's bytes; a dense product reuses each weight across many tokens and wins once a call
has enough of them. Where the two cross depends on the layer's layout, on the activations'
dtype, and on the kernel level: with bfloat16 activations the `avx512bf16` level multiplies
bfloat16 values and codes by vdpbf16ps, which keeps it ahead up to more tokens than the float32
paths. The alternative differs too: a dense layer's is torch's product on its own weight, a
compressed layer's is expanding the weight for the call, then that product.

The figures are the largest measured token count (of 1, 2, 4, 8, 16) at which the kernel beat
its alternative at every LLaMA-7B shape, two threads, on the machines of bench/README.md
("Per-layer CPU kernels", whose crossover tables `bench/layer_kernels.py` prints). A CPU with
AMX crosses sooner on the avx512bf16 level with bfloat16 activations: torch's bfloat16 product
runs on its tiles and costs about the same from 1 to 16 tokens. The amx level's kernels use the
tiles too and keep ahead to 16 tokens (the Xeon AMX VM's table there). Other CPUs cross
elsewhere; a wrong limit costs speed, never exactness: both paths give the layer's product.
"""

from __future__ import annotations

import torch

from prunellm.devices import cpu_has

MOST_TOKENS = 16  # no limit is above this (the kernels' tests go to 16 tokens)
# The AVX-512 float32 kernels (float32 activations, or bfloat16 ones widened on the avx512 level):
# a compressed layer's kernel beat expanding it up to 16 tokens, a dense layer's beat torch's
# bfloat16 product at 1 token only (bench/results/layer_kernels_float32.json).
AVX512_PATH = {"dense": 1, "values": 16, "4-bit": 16, "8-bit": 16}
# AVX2 and portable kernels: not timed against the expanded alternative on an AVX2-only machine.
FLOAT32_PATH = {"dense": 1, "values": 2, "4-bit": 2, "8-bit": 2}
# bfloat16 activations on the avx2 level, the level of CPUs without AVX-512. On an AVX2-only CPU
# imitated on the Zen 5 VM (the level forced, torch capped at AVX2:
# bench/results/layer_kernels_zen5_avx2only.json, 1 and 16 tokens) every compressed kernel beat
# expanding the layer at every 7B shape at both counts (stored values 2.0-2.9x at 16), the dense
# kernel beat torch's bfloat16 product at 1 token at two shapes of three (0.75-1.17x). Forced on
# the Xeon AMX VM (bench/results/layer_kernels_xeon_avx2.json, torch on AMX tiles) the stored
# values lost to expanding at 16 tokens at two shapes: not a CPU that runs this level.
AVX2_BF16_PATH = {"dense": 1, "values": 16, "4-bit": 16, "8-bit": 16}
AVX2_LEVEL = "avx2"
# bfloat16 activations on the avx512bf16 level of a CPU without AMX: a compressed layer's kernel
# beat expanding it at every count up to 16, a dense layer's beat torch's bfloat16 product up to
# 2 tokens and was level or ahead at 4 (0.99-1.72x; 1.05-1.52x in an earlier run), behind at 8
# (the Zen 5 VM, bench/results/layer_kernels_zen5.json: bench/README.md's crossover table; before
# the kernel's panels for 9-16 tokens the 4- and 8-bit codes lost at 16 there).
BF16_DOT_PATH = {"dense": 4, "values": 16, "4-bit": 16, "8-bit": 16}
# The same on a CPU with AMX (amx_bf16) with the avx512bf16 level forced, against torch's
# bfloat16 product on AMX tiles: the kernels beat it at every 7B shape up to 1 token dense, 4
# for stored values (50% bitmask), 8 for 4- and 8-bit codes (bench/layer_kernels.py on the Xeon
# before the amx level existed, its json in git history: commit e2205e3).
AMX_BF16_DOT_PATH = {"dense": 1, "values": 4, "4-bit": 8, "8-bit": 8}
# bfloat16 activations on the amx level (the tile kernel from a few tokens, vdpbf16ps below):
# every kernel beat its alternative (the dense one torch's bfloat16 product on AMX, a compressed
# one expanding then that product) at every 7B shape up to 16 tokens
# (bench/results/layer_kernels_xeon.json).
AMX_TILE_PATH = {"dense": 16, "values": 16, "4-bit": 16, "8-bit": 16}
# Int8 activations (runtime/int8_activations.py), whatever the activations' dtype, by the kernel
# that runs them (cpu_kernels.int8_kernel()): the VNNI kernel beat the expanded product on
# rounded activations at every 7B shape up to 16 tokens (bench/README.md's crossover tables,
# "(int8 activations)" rows: the Xeon's, and the Zen 5 VM's since the int8 kernel's panels); the
# AVX2 one, forced on the Xeon, beat it at 1 and at 16 tokens
# (bench/results/layer_kernels_xeon_avx2_int8.json; 2-15 not timed); the scalar kernel
# of CPUs without AVX2 is not timed against it (a guess, as FLOAT32_PATH's).
INT8_LIMITS = {"vnni": 16, "avx2": 16, "scalar": 1}
AVX512_LEVELS = ("avx512", "avx512bf16", "amx")
BF16_DOT_LEVEL = "avx512bf16"
AMX_TILE_LEVEL = "amx"
# Codes of this many bits and fewer make the "4-bit" family (nibble containers); wider, "8-bit".
BF16_DOT_CODE_BITS = 4


def family(code_bits: int | None) -> str:
    """The limit tables' key for a layer: "dense" (None: an uncompressed weight read in place),
    "values" (stored float values, code_bits 0), "4-bit" or "8-bit" (the codes' container)."""
    if code_bits is None:
        return "dense"
    if code_bits == 0:
        return "values"
    return "4-bit" if code_bits <= BF16_DOT_CODE_BITS else "8-bit"


def int8_limit(kernel: str) -> int:
    """Tokens per call up to which a layer with int8 activations runs on its kernel ("vnni",
    "avx2" or "scalar": cpu_kernels.int8_kernel()); above, the layer is expanded for the call."""
    return INT8_LIMITS[kernel]


def limits(code_bits: int | None, level: str, amx: bool | None = None) -> dict[torch.dtype, int]:
    """Tokens per call up to which the kernel runs, by activation dtype, for a layer whose codes
    take `code_bits` (see `family`) on kernel level `level` (cpu_kernels.isa()); `amx`: whether
    torch's bfloat16 products run on AMX (None: whether this CPU has amx_bf16)."""
    key = family(code_bits)
    wide = (AVX512_PATH if level in AVX512_LEVELS else FLOAT32_PATH)[key]
    if amx is None:
        amx = cpu_has("amx_bf16")
    if level == AMX_TILE_LEVEL:
        bf16 = AMX_TILE_PATH[key]
    elif level == BF16_DOT_LEVEL:
        bf16 = (AMX_BF16_DOT_PATH if amx else BF16_DOT_PATH)[key]
    elif level == AVX2_LEVEL:
        bf16 = AVX2_BF16_PATH[key]
    else:
        bf16 = wide
    return {torch.float32: wide, torch.bfloat16: bf16}

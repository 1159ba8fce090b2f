"""One layer in the compressed format: every layout, grid and dtype decompresses to exactly the
weights the solver produced, the smallest layout is chosen, and the bit packing round-trips."""

from __future__ import annotations

import pytest
import torch

from prunellm.formats.compressed.layer import LayerSpec, compress_weight, decompress_weight, satisfies_nm
from prunellm.formats.compressed.packing import container_bits, index_bits, pack_bits, unpack_bits
from prunellm.solvers import GPTQConfig, SparseGPTConfig, gptq, sparsegpt
from tests.conftest import layer_problem

PATTERNS = {"dense": {}, "50%": {"sparsity": 0.5}, "80%": {"sparsity": 0.8}, "2:4": {"nm": "2:4"},
            "4:8": {"nm": "4:8"}, "1:4": {"nm": "1:4"}}
GRIDS = {"none": {}, "4-bit g16": {"bits": 4, "group_size": 16}, "4-bit row sym": {"bits": 4, "sym": True},
         "8-bit g32": {"bits": 8, "group_size": 32}, "3-bit g16": {"bits": 3, "group_size": 16},
         "2-bit row": {"bits": 2}}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def solve(pattern: dict, grid: dict):
    W, H = layer_problem(rows=24, cols=64, seed=3)
    if not pattern:
        return gptq(W, H, GPTQConfig(**grid)) if grid else None
    return sparsegpt(W, H, SparseGPTConfig(**pattern, **grid))


# Every pattern with every grid, but a dense float layer: nothing to compress there.
CASES = [(pattern, grid) for pattern in PATTERNS for grid in GRIDS if PATTERNS[pattern] or GRIDS[grid]]


@pytest.mark.parametrize("pattern,grid", CASES)
def test_every_layout_decompresses_to_the_solvers_weights(pattern: str, grid: str) -> None:
    solved = solve(PATTERNS[pattern], GRIDS[grid])
    nm = tuple(int(x) for x in PATTERNS[pattern]["nm"].split(":")) if "nm" in PATTERNS[pattern] else None
    for dtype in DTYPES:
        weight = solved.weight.to(dtype)
        packed = compress_weight(weight, solved.grid, nm)
        if packed is None:  # only a lightly sparse float layer may stay plain
            assert not GRIDS[grid] and (weight == 0).float().mean() < 0.6
            continue
        back = decompress_weight(packed)
        bits = GRIDS[grid].get("bits", 16)
        if dtype == torch.bfloat16 and bits == 8:
            continue  # bf16 cannot hold every 8-bit level: compress_layers refuses it (test_checkpoint)
        assert back.dtype == dtype and back.shape == weight.shape
        assert torch.equal(back, weight), (pattern, grid, dtype)
        if nm is not None:
            assert packed.spec.layout == "nm"
        elif pattern == "dense":
            assert packed.spec.layout == "quant"
        else:  # a bitmask only where it beats packing every weight's code
            plain = weight.numel() * (container_bits(bits) if bits < 16 else 8 * weight.element_size()) // 8
            assert packed.spec.layout in ("bitmask", "quant")
            assert packed.spec.layout == "quant" or packed.nbytes - _grid_bytes(packed) < plain
        assert packed.nbytes < weight.numel() * 2 or dtype == torch.float32


def _grid_bytes(packed) -> int:
    return sum(packed.tensors[p].numel() * packed.tensors[p].element_size() for p in ("scales", "zeros")
               if p in packed.tensors)


def test_layout_choice_follows_size() -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 64, dtype=torch.float16)
    assert compress_weight(weight) is None  # dense float: nothing to gain
    light = weight.clone()
    light[:, ::20] = 0  # 5% zeros: a bitmask costs more than it saves
    assert compress_weight(light) is None
    half = weight.clone()
    half[torch.rand_like(weight, dtype=torch.float32) < 0.5] = 0
    assert compress_weight(half).spec.layout == "bitmask"
    two_four = weight.clone().reshape(16, 16, 4)
    two_four[..., 1:3] = 0
    packed = compress_weight(two_four.reshape(16, 64))  # recognised without being told
    assert packed.spec.layout == "nm" and (packed.spec.n, packed.spec.m) == (2, 4)
    assert packed.tensors["values"].shape == (16, 32) and packed.tensors["indices"].shape == (16, 8)


def test_nm_groups_with_extra_zeros_keep_their_slots() -> None:
    weight = torch.zeros(2, 8)
    weight[0, 3] = 1.5  # a 2:4 group holding one non-zero: a zero fills the second slot
    weight[1, 4:8] = torch.tensor([0.0, 2.0, 0.0, -1.0])
    packed = compress_weight(weight, nm=(2, 4))
    assert torch.equal(decompress_weight(packed), weight)
    assert satisfies_nm(weight, 2, 4) and not satisfies_nm(torch.ones(2, 8), 2, 4)


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot store"):
        compress_weight(torch.zeros(4, 8, dtype=torch.float64))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("length", [1, 7, 8, 33])
def test_packing_round_trips(bits: int, length: int) -> None:
    values = torch.randint(0, 2**bits, (3, length), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (length * bits + 7) // 8)
    assert torch.equal(unpack_bits(packed, bits, length), values.to(torch.uint8))


def test_packing_puts_the_first_value_in_the_lowest_bits() -> None:
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack_bits(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    assert [container_bits(b) for b in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    assert [index_bits(m) for m in (2, 4, 8, 16)] == [1, 2, 4, 4]
    with pytest.raises(ValueError):
        container_bits(9)


def test_spec_round_trips_through_json() -> None:
    spec = LayerSpec("nm", (8, 16), "float16", 2, 4, 4, 128, False)
    assert LayerSpec.from_json(spec.to_json()) == spec
    assert "bits" not in LayerSpec("bitmask", (8, 16), "bfloat16").to_json()


@pytest.mark.parametrize("grid", ["4-bit g16", "3-bit g16", "8-bit g32"])
def test_a_quantized_bitmask_converts_to_dense_codes_losslessly(grid: str) -> None:
    from prunellm.formats.compressed.layer import bitmask_as_quant

    solved = solve({"sparsity": 0.8}, GRIDS[grid])
    packed = compress_weight(solved.weight, solved.grid)
    assert packed.spec.layout == "bitmask"
    dense_codes = bitmask_as_quant(packed)
    assert dense_codes.spec.layout == "quant" and dense_codes.spec.bits == packed.spec.bits
    assert torch.equal(decompress_weight(dense_codes), solved.weight)
    with pytest.raises(ValueError):
        bitmask_as_quant(dense_codes)


@pytest.mark.parametrize("pattern,grid", [(p, g) for p in ("50%", "2:4", "dense")
                                          for g in ("none", "4-bit g16", "2-bit row", "8-bit g32", "3-bit g16")
                                          if (p, g) != ("dense", "none")])
def test_row_slices_decompress_to_the_rows(pattern: str, grid: str) -> None:
    from prunellm.formats.compressed.layer import slice_rows

    solved = solve(PATTERNS[pattern], GRIDS[grid])
    packed = compress_weight(solved.weight, solved.grid, (2, 4) if pattern == "2:4" else None)
    for start, stop in [(0, 24), (0, 1), (3, 10), (7, 8), (13, 24)]:  # odd starts: codes sharing a byte
        part = slice_rows(packed, start, stop)
        assert part.spec.shape == (stop - start, 64)
        assert torch.equal(decompress_weight(part), solved.weight[start:stop]), (start, stop)
    with pytest.raises(ValueError):
        slice_rows(packed, 5, 5)


def test_nm_groups_cut_by_quantization_groups_decompress_exactly() -> None:
    from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize

    torch.manual_seed(2)
    weight = torch.randn(6, 32)
    weight.reshape(6, 4, 8)[..., 1::2] = 0  # 4:8, and quantization groups of 4 inputs: half an n:m group each
    groups = weight.reshape(-1, 4)
    scale, zero = fit_minmax(groups, 4, sym=False)
    weight = quantize(groups, scale[:, None], zero[:, None], 4).reshape(6, 32)
    grid = QuantGrid(4, False, 4, scale.reshape(6, 8), zero.reshape(6, 8))
    packed = compress_weight(weight, grid, (4, 8))
    assert packed.spec.layout == "nm" and packed.spec.group_size % packed.spec.m != 0
    assert torch.equal(decompress_weight(packed), weight)

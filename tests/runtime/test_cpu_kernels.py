"""The native CPU kernels (runtime/cpu_kernels.py) against expand-then-multiply.

For every layout, value kind and instruction-set level this CPU runs (forced through
PRUNELLM_CPU_KERNEL, the portable one always among them), x @ Wᵀ from the packed layer equals
x.float() @ decompress_weight(packed).float().T up to float32 rounding of the sum: within 1e-4
of the row's magnitude, sum |x| |w|. Shapes are odd on purpose (C not a multiple of 64, R not
of 16) and groups of inputs are per row, 32, 64, 128, 256, a size the AVX-512 kernel leaves to
the portable one (40), and one that cuts n:m groups. With bfloat16 activations the avx512bf16
level multiplies bfloat16 values and 4- and 8-bit codes of bfloat16 / float32 layers by
vdpbf16ps (groups of whole 64 columns; the rest as avx512): every case and 1 to 16 tokens again,
in float32. The amx level multiplies bfloat16 layers' decoded weights in the AMX tile unit from a
few tokens a call: every case again with the tiles forced from 1 token.
"""

from __future__ import annotations

import pytest
import torch

try:
    from prunellm.formats.compressed.layer import CompressedWeight, compress_weight, decompress_weight
except ImportError:
    from prunellm.io.compressed.layer import CompressedWeight, compress_weight, decompress_weight

from prunellm.errors import PrunellmError
from prunellm.runtime import cpu_kernels
from prunellm.solvers.quant import QuantGrid, fit_minmax

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="native CPU kernels not built (no C++ compiler at install)")

ROWS = 37


def _pruned(cols: int, *, sparsity: float = 0.0, nm: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(ROWS, cols, generator=gen)
    if nm is not None:  # the n smallest of every m inputs set to zero
        n, m = nm
        groups = weight.reshape(ROWS, cols // m, m)
        drop = groups.abs().argsort(dim=-1)[..., :n]
        weight = groups.scatter(-1, drop, 0.0).reshape(ROWS, cols)
    elif sparsity:
        weight[torch.rand(ROWS, cols, generator=gen) < sparsity] = 0.0
    return weight


def _on_grid(weight: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, QuantGrid]:
    """weight moved onto a min-max grid of `bits` (zeros stay zero: zero is on the grid)."""
    rows, cols = weight.shape
    groups = 1 if group_size is None else cols // group_size
    scale, zero = fit_minmax(weight.reshape(rows * groups, -1), bits, sym=False)
    grid = QuantGrid(bits, False, group_size, scale.reshape(rows, groups), zero.reshape(rows, groups))
    s, z = grid.expand(cols)
    codes = torch.clamp(torch.round(weight / s) + z, 0, 2**bits - 1)
    return s * (codes - z), grid


def _layer(case: str) -> CompressedWeight:
    """A packed layer for a case name: layout, values, sparsity, group size."""
    kind, _, detail = case.partition(":")
    if kind == "bitmask":  # bitmask:<dtype>:<sparsity>
        dtype, sparsity = detail.split(":")
        weight = _pruned(200, sparsity=float(sparsity)).to(getattr(torch, dtype))
        packed = compress_weight(weight)
    elif kind == "nm":  # nm:<n>:<m>:<dtype>
        n, m, dtype = detail.split(":")
        weight = _pruned(208, nm=(int(n), int(m))).to(getattr(torch, dtype))
        packed = compress_weight(weight, nm=(int(n), int(m)))
    else:  # q<layout>:<bits>:<group or row>:<cols>[:<dtype>], layout bitmask / nm n-m / quant
        bits, group, cols, *dtype = detail.split(":")
        group_size = None if group == "row" else int(group)
        nm = None
        if kind.startswith("qnm"):
            nm = tuple(int(v) for v in kind[3:].split("-"))
        sparsity = (0.8 if bits == "2" else 0.5) if kind == "qbitmask" else 0.0
        weight, grid = _on_grid(_pruned(int(cols), sparsity=sparsity, nm=nm), int(bits), group_size)
        if dtype:  # stored in a half dtype: codes recovered from the rounded weights
            weight = weight.to(getattr(torch, dtype[0]))
        packed = compress_weight(weight, grid, nm=nm)
    expected = {"bitmask": "bitmask", "nm": "nm", "qbitmask": "bitmask", "qquant": "quant"}.get(kind, "nm")
    assert packed is not None and packed.spec.layout == expected, case
    return packed


CASES = [
    "bitmask:float32:0.5", "bitmask:float16:0.5", "bitmask:bfloat16:0.5", "bitmask:bfloat16:0.7",
    "nm:2:4:bfloat16", "nm:2:4:float16", "nm:2:4:float32", "nm:4:8:bfloat16", "nm:1:4:float32", "nm:6:16:bfloat16",
    "qbitmask:4:row:200", "qbitmask:4:32:160", "qbitmask:4:128:384", "qbitmask:8:row:200", "qbitmask:8:32:160",
    "qbitmask:4:40:200", "qbitmask:2:32:160", "qbitmask:4:32:160:float16", "qbitmask:4:32:160:bfloat16",
    "qnm2-4:4:row:200", "qnm2-4:4:128:384", "qnm2-4:8:32:160", "qnm2-4:4:32:160:bfloat16", "qnm4-8:4:4:200",
    "qnm2-4:4:2:200", "qbitmask:4:64:320", "qbitmask:4:64:320:bfloat16", "qbitmask:4:row:200:bfloat16",
    "qbitmask:4:256:512", "qbitmask:4:128:384:bfloat16", "qnm2-4:4:64:256:bfloat16", "qnm2-4:4:row:200:bfloat16",
    "qquant:4:row:200", "qquant:4:128:384", "qquant:8:32:160", "qquant:8:row:200", "qquant:2:32:160",
    "qquant:4:40:200", "qquant:4:32:160:float16", "qquant:4:64:192", "qquant:4:128:384:bfloat16",
    "qquant:4:row:200:bfloat16", "qquant:4:256:512:bfloat16",
    # 8-bit codes in every layout, groups of whole 64 columns or per row: the avx512bf16 level's
    # vdpbf16ps path (float16 layers' stay on the float32 kernel)
    "qbitmask:8:128:384", "qbitmask:8:64:320:bfloat16", "qbitmask:8:row:200:bfloat16", "qnm2-4:8:row:200",
    "qnm2-4:8:64:256:bfloat16", "qnm4-8:8:128:384", "qquant:8:128:384", "qquant:8:64:192:bfloat16",
    "qquant:8:row:200:bfloat16", "qquant:8:256:512:bfloat16", "qquant:8:128:384:float16",
]


@pytest.fixture(scope="module")
def layers() -> dict[str, tuple[CompressedWeight, torch.Tensor, cpu_kernels.NativeWeight]]:
    built = {}
    for case in CASES:
        packed = _layer(case)
        built[case] = (packed, decompress_weight(packed).float(), cpu_kernels.prepare(packed.spec, packed.tensors))
    return built


def _close(y: torch.Tensor, x: torch.Tensor, dense: torch.Tensor, rel: float = 1e-4) -> None:
    reference = x.float() @ dense.T  # (T, R)
    magnitude = x.float().abs() @ dense.abs().T  # the row's size: what float32 rounding scales with
    error = (y.float() - reference).abs()
    assert bool((error <= rel * magnitude + 1e-6).all()), f"max error {float((error - rel * magnitude).max()):.3g}"


@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_expand_then_multiply(layers, level, threads, case) -> None:
    packed, dense, native = layers[case]
    for tokens in (1, 3, 16):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens))
        y = cpu_kernels.matmul(x, native)
        assert y.shape == (tokens, ROWS) and y.dtype == torch.float32
        _close(y, x, dense)


def _float_sums(x: torch.Tensor, native: cpu_kernels.NativeWeight) -> torch.Tensor:
    """The library's float32 sums for bfloat16 activations (matmul rounds them to bfloat16)."""
    y = torch.empty(x.shape[0], native.shape[0], dtype=torch.float32)
    done = cpu_kernels._require().pnl_matmul(native.ref, x.data_ptr(), 1, x.shape[0], y.data_ptr(),
                                             torch.get_num_threads(), cpu_kernels.LEVELS[cpu_kernels.isa()])
    assert done == 0
    return y


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_activations_sum_as_expand_then_multiply(layers, level, threads, case) -> None:
    """Every token count a pass takes (1 to 16), activations exactly bfloat16: the vdpbf16ps
    kernel where the level has it, the float32 kernels' widening elsewhere."""
    packed, dense, native = layers[case]
    for tokens in range(1, 17):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)


# Layers wide enough that a call of 9-16 tokens walks them in several panels (avx512bf16.cpp's
# panels: 8 steps of 64 columns a panel at 16 tokens, 14 at 9), groups ending inside a panel,
# and 37 rows: chunks of 8 rows and a remainder of 5.
WIDE_CASES = ["qbitmask:4:128:2304:bfloat16", "qbitmask:4:128:2304", "qnm2-4:4:64:2304:bfloat16",
              "qquant:8:64:2304:bfloat16", "values"]


@pytest.mark.parametrize("case", WIDE_CASES)
def test_calls_of_nine_to_sixteen_tokens_carry_their_sums_across_panels(level, threads, case) -> None:
    packed = compress_weight(_pruned(2304, sparsity=0.5).bfloat16()) if case == "values" else _layer(case)
    dense, native = decompress_weight(packed).float(), cpu_kernels.prepare(packed.spec, packed.tensors)
    for tokens in (9, 16):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)


# Rows longer than a block's prefetch floor (bf16_sources.inc, prefetch.inc): each stream is
# prefetched where it is read a block of rows on (stored bfloat16 values: the block's own
# BlockPrefetch over its thread's rows), clipped at the last row (37 rows: the last blocks reach
# past it), at 1 and 2 tokens (blocks of 4 and 2 rows) and 9 (chunks of panels).
LONG_CASES = ["values:0.5", "values:0.7", "qbitmask:4:128:8960:bfloat16", "qnm2-4:4:128:8960:bfloat16",
              "qquant:8:128:8960:bfloat16"]


@pytest.mark.parametrize("case", LONG_CASES)
def test_long_rows_sum_as_expand_then_multiply(level, threads, case) -> None:
    if case.startswith("values"):
        packed = compress_weight(_pruned(8960, sparsity=float(case.split(":")[1])).bfloat16())
    else:
        packed = _layer(case)
    dense, native = decompress_weight(packed).float(), cpu_kernels.prepare(packed.spec, packed.tensors)
    for tokens in (1, 2, 9):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)


def test_masked_rows_of_uneven_lengths_sum_as_expand_then_multiply(level, threads) -> None:
    """Stored bfloat16 values whose rows hold nothing, everything or half (BlockPrefetch paces
    its streams by each block's bytes: blocks of no bytes, of a full layer's rows, and the single
    rows after the last whole block), 8960 columns and 37 rows, 1 to 4 tokens (blocks of 4, 2,
    2 and 1 rows)."""
    weight = _pruned(8960, sparsity=0.5)  # (ROWS, 8960)
    full = torch.randn(ROWS, 8960, generator=torch.Generator().manual_seed(5))
    weight[0::4] = 0.0
    weight[1::4] = full[1::4]
    weight[8:16] = 0.0  # two whole blocks of 4 rows with nothing stored
    packed = compress_weight(weight.bfloat16())
    assert packed.spec.layout == "bitmask"
    dense, native = decompress_weight(packed).float(), cpu_kernels.prepare(packed.spec, packed.tensors)
    for tokens in (1, 2, 3, 4):
        x = torch.randn(tokens, 8960, generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dense_weight_in_place_with_bfloat16_activations(level, dtype) -> None:
    weight = torch.randn(203, 320, generator=torch.Generator().manual_seed(2)).to(dtype)  # rows not of 16
    native = cpu_kernels.prepare_dense(weight)
    for tokens in (1, 2, 3, 4, 7, 16, 21):
        x = torch.randn(tokens, 320, generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, weight.float())


@pytest.fixture
def tiles_from_one_token():
    """The amx level's tile kernel on every call (by default it starts at a few tokens)."""
    before = cpu_kernels.set_tile_min_tokens(1)
    yield
    cpu_kernels.set_tile_min_tokens(max(before, 0))


@pytest.mark.skipif(cpu_kernels.available() and "amx" not in cpu_kernels.supported_levels(),
                    reason="this CPU (or its OS) lacks AMX tiles")
@pytest.mark.parametrize("case", CASES)
def test_the_tile_kernel_sums_as_expand_then_multiply(layers, threads, monkeypatch, tiles_from_one_token,
                                                      case) -> None:
    """The amx level's tiles from 1 token (rows of whole 16s on the tiles, a part's last rows
    and the weights the tiles do not take on avx512bf16's kernels), bfloat16 activations."""
    packed, dense, native = layers[case]
    monkeypatch.setenv(cpu_kernels.ENV, "amx")
    for tokens in (1, 2, 5, 16):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)


@pytest.mark.skipif(cpu_kernels.available() and "amx" not in cpu_kernels.supported_levels(),
                    reason="this CPU (or its OS) lacks AMX tiles")
@pytest.mark.parametrize("case", ["bitmask:bfloat16:0.5", "qbitmask:4:128:384:bfloat16", "qquant:8:64:192:bfloat16"])
def test_the_amx_level_takes_the_tiles_from_its_switch_point(layers, monkeypatch, case) -> None:
    """Below the switch point the amx level is avx512bf16's kernel, bit for bit; from it the tiles
    sum in another order (pairs of columns across 16 rows), so the bits differ somewhere: the
    tile kernel did run."""
    packed, dense, native = layers[case]
    x = torch.randn(3, dense.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    monkeypatch.setenv(cpu_kernels.ENV, "avx512bf16")
    dot = _float_sums(x, native)
    monkeypatch.setenv(cpu_kernels.ENV, "amx")
    before = cpu_kernels.set_tile_min_tokens(4)
    try:
        below = _float_sums(x, native)
        cpu_kernels.set_tile_min_tokens(3)
        tiles = _float_sums(x, native)
    finally:
        cpu_kernels.set_tile_min_tokens(max(before, 0))
    assert torch.equal(below, dot)
    assert not torch.equal(tiles, dot)
    _close(tiles, x, dense)


@pytest.mark.skipif(cpu_kernels.available() and "avx512bf16" not in cpu_kernels.supported_levels(),
                    reason="this CPU lacks AVX512_BF16")
@pytest.mark.parametrize("case", ["bitmask:bfloat16:0.5", "qbitmask:4:128:384", "qquant:4:row:200:bfloat16",
                                  "qbitmask:8:64:320:bfloat16", "qnm2-4:8:row:200", "qquant:8:128:384"])
@pytest.mark.parametrize("bf16_level", ["avx512bf16", "amx"])
def test_the_bf16_levels_take_bfloat16_activations_to_the_bf16_products(layers, monkeypatch, tiles_from_one_token,
                                                                        case, bf16_level) -> None:
    """What only vdpbf16ps and the tiles' tdpbf16ps do: they read bfloat16 subnormals as zero.
    Activations of 2^-130 (subnormal in bfloat16) sum to zero there and to a tiny nonzero
    through float32 (avx512); float32 activations of the same value take the float32 kernel at
    every level."""
    if bf16_level not in cpu_kernels.supported_levels():
        pytest.skip(f"this CPU lacks the {bf16_level} level")
    packed, dense, native = layers[case]
    x = torch.full((2, dense.shape[1]), 2.0**-130).to(torch.bfloat16)
    assert float(x[0, 0]) == 2.0**-130
    monkeypatch.setenv(cpu_kernels.ENV, bf16_level)
    flushed, widened = _float_sums(x, native), cpu_kernels.matmul(x.float(), native)
    assert bool((flushed == 0).all()) and bool((widened != 0).any())
    monkeypatch.setenv(cpu_kernels.ENV, "avx512")
    assert torch.equal(_float_sums(x, native), widened)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize("case", CASES)
def test_expand_gives_the_formats_weight_bit_for_bit(layers, level, threads, case) -> None:
    """What a prefill multiplies with once the file's parts are dropped: decompress_weight's
    result, every bit (signed zeros, half-precision rounding of dequantized codes), at every
    level (the AVX-512 levels expand what their kernels read with vector code)."""
    packed, _, native = layers[case]
    expected = decompress_weight(packed)
    weight = cpu_kernels.expand(native)
    assert weight.dtype == expected.dtype == native.dtype and weight.shape == expected.shape
    assert torch.equal(_bits(weight), _bits(expected))


ODD_STEP_CASES = ["qbitmask:4:32:160", "qbitmask:4:128:384:bfloat16", "qbitmask:4:row:200:bfloat16",
                  "qbitmask:4:64:320", "qbitmask:4:32:160:float16"]


def _step_counts(mask: torch.Tensor) -> torch.Tensor:
    """Stored columns per 64-column step: the set bits of each int64 mask word."""
    return torch.tensor([bin(word & (2**64 - 1)).count("1") for word in mask.reshape(-1).tolist()])


def test_masked_4_bit_steps_are_made_even_with_zero_weights(layers) -> None:
    """A masked 4-bit layer's odd steps store one more column, the group's zero point (weight
    +0): every step then holds an even number of codes, the expansion is the format's weight
    bit for bit (signed zeros included), and the codes grow by at most one per step."""
    for case in ODD_STEP_CASES + ["qnm2-4:4:128:384", "qnm4-8:4:4:200"]:
        packed, _, native = layers[case]
        layout = native.layout
        assert layout.even_steps, case
        counts = _step_counts(layout.mask)
        assert bool((counts % 2 == 0).all()), case
        stored = int(packed.tensors["row_offsets"][-1]) if "row_offsets" in packed.tensors else None
        if stored is not None:
            assert stored <= int(counts.sum()) <= stored + layout.mask.numel(), case
        assert torch.equal(_bits(cpu_kernels.expand(native)), _bits(decompress_weight(packed))), case


@pytest.mark.parametrize("case", ODD_STEP_CASES)
def test_masked_4_bit_layers_with_odd_steps_read_at_half_bytes(layers, level, monkeypatch, case) -> None:
    """Where a layer's steps cannot all be made even (cpu_layout keeps odd ones: no column to
    spare, a scale that is not finite) the kernels read codes that start mid-byte: the same
    products."""
    from prunellm.runtime import cpu_layout

    monkeypatch.setattr(cpu_layout, "_even_steps", lambda spec, t, mask, counts, codes: (mask, counts, codes, False))
    packed, dense, _ = layers[case]
    native = cpu_kernels.prepare(packed.spec, packed.tensors)
    assert not native.layout.even_steps
    counts = _step_counts(native.layout.mask)
    assert bool((counts % 2 == 1).any())  # the case has odd steps to read
    for tokens in (1, 2, 5, 16):
        x = torch.randn(tokens, dense.shape[1], generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
        _close(_float_sums(x, native), x, dense)
    assert torch.equal(_bits(cpu_kernels.expand(native)), _bits(decompress_weight(packed)))


@pytest.mark.parametrize("case", ["qbitmask:4:32:160", "qbitmask:2:32:160", "qbitmask:4:row:200:bfloat16",
                                  "qnm2-4:4:row:200", "qquant:4:row:200"])
def test_codes_repacked_in_bands_of_rows_give_the_same_layout(layers, monkeypatch, case) -> None:
    """Large layers' codes are placed a band of rows at a time (rows of a bitmask layer end
    mid-byte, so every band starts a row on a whole byte): bands of a few rows give the one-band
    layout byte for byte."""
    from prunellm.runtime import cpu_layout

    packed, _, native = layers[case]
    monkeypatch.setattr(cpu_layout, "BAND_CODES", 97)  # a few rows a band, cut mid-row
    banded = cpu_kernels.prepare(packed.spec, packed.tensors)
    assert torch.equal(banded.layout.values, native.layout.values)
    assert torch.equal(banded.layout.row_start, native.layout.row_start)
    assert torch.equal(cpu_kernels.expand(banded), cpu_kernels.expand(native))


def test_expansion_for_a_call_reuses_its_buffer_and_gives_the_same_bits(layers, level) -> None:
    """A prefill's expansion goes into a buffer the thread keeps: layers of other shapes and
    dtypes, one after the other, each get their own weight's bits; a wrong `out` is refused."""
    cases = ["qbitmask:4:128:384:bfloat16", "bitmask:bfloat16:0.5", "qquant:8:32:160", "qnm2-4:4:row:200:bfloat16"]
    kept = {}
    for case in cases + cases[:1]:
        packed, _, native = layers[case]
        weight = cpu_kernels.expand_for_call(native)
        assert torch.equal(_bits(weight), _bits(decompress_weight(packed)))
        kept.setdefault(weight.dtype, weight.untyped_storage().data_ptr())
        assert weight.untyped_storage().data_ptr() == kept[weight.dtype]  # the same buffer
    _, dense, native = layers[cases[0]]
    with pytest.raises(PrunellmError, match="out must be"):
        cpu_kernels.expand(native, torch.empty(dense.shape, dtype=torch.float32))


def test_an_expansion_above_the_kept_size_gets_a_fresh_tensor(layers, monkeypatch) -> None:
    packed, dense, native = layers["qbitmask:4:128:384:bfloat16"]
    monkeypatch.setattr(cpu_kernels, "KEPT_BUFFER_BYTES", dense.numel() * 2 - 1)
    first, second = cpu_kernels.expand_for_call(native), cpu_kernels.expand_for_call(native)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert torch.equal(_bits(first), _bits(decompress_weight(packed)))


@pytest.mark.parametrize("case", ["bitmask:bfloat16:0.5", "qnm2-4:4:128:384", "qquant:8:32:160"])
def test_bfloat16_activations_give_bfloat16(layers, level, case) -> None:
    packed, dense, native = layers[case]
    x = torch.randn(5, dense.shape[1]).to(torch.bfloat16)
    y = cpu_kernels.matmul(x, native)
    assert y.dtype == torch.bfloat16
    reference = x.float() @ dense.T
    if level not in ("avx512bf16", "amx"):  # the same float32 sums as float32 activations, then rounded
        assert torch.equal(y, cpu_kernels.matmul(x.float(), native).to(torch.bfloat16))
    assert bool(((y.float() - reference).abs() <= 2**-8 * reference.abs() + 1e-4 * (x.float().abs() @ dense.abs().T)
                 + 1e-6).all())


def test_more_than_sixteen_tokens(layers) -> None:
    packed, dense, native = layers["qbitmask:4:32:160"]
    x = torch.randn(21, dense.shape[1])
    _close(cpu_kernels.matmul(x, native), x, dense)


def test_levels_agree_on_every_row(layers, threads, monkeypatch) -> None:
    """Each level's rows match the portable kernel's (no row left out by a thread's share)."""
    packed, dense, native = layers["bitmask:bfloat16:0.7"]
    x = torch.randn(4, dense.shape[1])
    outputs = {}
    for name in cpu_kernels.supported_levels():
        monkeypatch.setenv(cpu_kernels.ENV, name)
        outputs[name] = cpu_kernels.matmul(x, native)
    for name, y in outputs.items():
        torch.testing.assert_close(y, outputs["portable"], rtol=1e-5, atol=1e-5, msg=name)


def _replaced(packed: CompressedWeight, **parts: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**packed.tensors, **parts}


def test_bad_parts_refused(layers) -> None:
    bitmask = layers["bitmask:bfloat16:0.5"][0]
    t = bitmask.tensors
    bad = {
        "values": _replaced(bitmask, values=t["values"][:-1]),
        "row_offsets": _replaced(bitmask, row_offsets=t["row_offsets"] + torch.arange(ROWS + 1)),
        "is torch.float16": _replaced(bitmask, values=t["values"].to(torch.float16)),
        "'mask' is missing": {k: v for k, v in t.items() if k != "mask"},
    }
    for problem, tensors in bad.items():
        with pytest.raises(ValueError, match=problem):
            cpu_kernels.prepare(bitmask.spec, tensors)
    quant = layers["qquant:4:128:384"][0]
    with pytest.raises(ValueError, match="scales"):
        cpu_kernels.prepare(quant.spec, _replaced(quant, scales=quant.tensors["scales"][:, :1]))
    with pytest.raises(ValueError, match="qweight"):
        cpu_kernels.prepare(quant.spec, _replaced(quant, qweight=quant.tensors["qweight"][:-1]))
    nm = layers["nm:2:4:bfloat16"][0]
    with pytest.raises(ValueError, match="indices"):  # positions 3, 0: not increasing
        cpu_kernels.prepare(nm.spec, _replaced(nm, indices=torch.full_like(nm.tensors["indices"], 0b00110011)))


def test_bad_activations_and_levels_refused(layers, monkeypatch) -> None:
    native = layers["nm:2:4:bfloat16"][2]
    for x, problem in [(torch.randn(2, 207), "shape"), (torch.randn(2, 208).half(), "float32 or bfloat16"),
                       (torch.randn(208), "shape")]:
        with pytest.raises(ValueError, match=problem):
            cpu_kernels.matmul(x, native)
    monkeypatch.setenv(cpu_kernels.ENV, "sse9")
    with pytest.raises(ValueError, match="PRUNELLM_CPU_KERNEL"):
        cpu_kernels.matmul(torch.randn(1, 208), native)


def test_unsupported_forced_level_refused(layers, monkeypatch) -> None:
    missing = [name for name in cpu_kernels.LEVELS if name not in cpu_kernels.supported_levels()]
    if not missing:
        pytest.skip("this CPU runs every level")
    monkeypatch.setenv(cpu_kernels.ENV, missing[0])
    with pytest.raises(ValueError, match="lacks"):
        cpu_kernels.matmul(torch.randn(1, 208), layers["nm:2:4:bfloat16"][2])

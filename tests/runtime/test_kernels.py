"""The compressed-weight kernels give x @ Wᵀ of the decompressed weight, for every layer they cover.

Without a GPU they run on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which executes the same kernel code; with one, compiled, on the GPU.
"""

import pytest
import torch

from prunellm.formats.compressed.layer import CompressedWeight, LayerSpec, compress_weight, decompress_weight
from prunellm.runtime.kernels import CONFIGS, available, compressed_matmul, launch, supports
from prunellm.solvers.quant import QuantGrid, fit_minmax, quantize

pytest.importorskip("triton")

ROWS, COLS = 40, 256  # 40 rows: a partial row tile for every BLOCK_N (16, 32, 64); the interpreter is slow
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HALF = [torch.float16, torch.bfloat16]


def _on_grid(weight: torch.Tensor, bits: int, group_size: int | None, sym: bool) -> tuple[torch.Tensor, QuantGrid]:
    """weight (R, C) rounded onto its min-max grid (per row or per group), and the grid."""
    rows, cols = weight.shape
    groups = weight.reshape(-1, group_size or cols)  # (R * G, group)
    scale, zero = fit_minmax(groups, bits, sym)
    on_grid = quantize(groups, scale[:, None], zero[:, None], bits).reshape(rows, cols)
    return on_grid, QuantGrid(bits, sym, group_size, scale.reshape(rows, -1), zero.reshape(rows, -1))


def _prune_24(weight: torch.Tensor) -> torch.Tensor:
    """The two largest |w| of every four kept; and groups with more zeros, which fill their slots
    with zeros: a zero row, a group of three zeros, a group of four."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    pruned = torch.zeros_like(groups).scatter(-1, keep, groups.gather(-1, keep)).reshape(rows, cols)
    pruned[0] = 0
    pruned[1, :3] = 0
    pruned[2, 4:8] = 0
    return pruned


def _layer(kind: str, dtype: torch.dtype, bits: int = 4, group_size: int | None = None, sym: bool = False,
           rows: int = ROWS, cols: int = COLS, seed: int = 0) -> CompressedWeight:
    """A compressed layer: kind "quant" (dense codes), "2:4" (values) or "2:4 quant" (codes)."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    nm = None if kind == "quant" else (2, 4)
    if nm:
        weight = _prune_24(weight)
    grid = None
    if kind != "2:4":
        weight, grid = _on_grid(weight, bits, group_size, sym)
    packed = compress_weight(weight.to(dtype), grid, nm)
    assert packed.spec.layout == ("quant" if kind == "quant" else "nm")
    return CompressedWeight(packed.spec, {name: t.to(DEVICE) for name, t in packed.tensors.items()})


def _tokens(count: int, packed: CompressedWeight, seed: int = 1) -> torch.Tensor:
    x = torch.randn(count, packed.spec.shape[1], generator=torch.Generator().manual_seed(seed))
    return x.to(decompress_weight(packed).dtype).to(DEVICE)


def _assert_product(y: torch.Tensor, x: torch.Tensor, packed: CompressedWeight) -> None:
    """y is x @ Wᵀ of the decompressed W up to one rounding to the dtype (and float32 sums)."""
    W = decompress_weight(packed).float()  # (R, C)
    expected = x.float() @ W.t()  # (B, R)
    assert y.dtype == x.dtype and y.shape == expected.shape and y.device == x.device
    bound = torch.finfo(x.dtype).eps * expected.abs() + 1e-5 * (x.float().abs() @ W.abs().t())
    error = (y.float() - expected).abs()
    assert (error <= bound).all(), f"worst error {error.max():.3g} where the bound is {bound[error > bound].min():.3g}"


@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("bits, group_size, sym", [
    (4, 32, False), (4, 128, True), (4, None, False), (3, 64, False), (8, 64, True), (8, None, False),
])
def test_dense_codes(bits, group_size, sym, dtype, tokens):
    packed = _layer("quant", dtype, bits, group_size, sym)
    x = _tokens(tokens, packed)
    _assert_product(compressed_matmul(x, packed), x, packed)


@pytest.mark.parametrize("rows, cols, group_size", [(5, 256, 256), (70, 384, None), (33, 96, 32)])
def test_dense_codes_at_other_shapes(rows, cols, group_size):
    # fewer rows than a tile; a row of three 128-column tiles; 32-column tiles
    packed = _layer("quant", torch.float16, 4, group_size, rows=rows, cols=cols)
    for tokens in (1, 5):
        x = _tokens(tokens, packed)
        _assert_product(compressed_matmul(x, packed), x, packed)


@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("dtype", HALF)
def test_2_4_values(dtype, tokens):
    packed = _layer("2:4", dtype)
    x = _tokens(tokens, packed)
    _assert_product(compressed_matmul(x, packed), x, packed)


@pytest.mark.parametrize("tokens", [1, 16])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("bits, group_size, sym", [(4, 32, False), (4, 128, True), (4, None, False), (8, 64, False)])
def test_2_4_codes(bits, group_size, sym, dtype, tokens):
    packed = _layer("2:4 quant", dtype, bits, group_size, sym)
    x = _tokens(tokens, packed)
    _assert_product(compressed_matmul(x, packed), x, packed)


def test_2_4_at_other_shapes():
    # fewer rows than a tile, and 32-column tiles
    layers = (_layer("2:4", torch.bfloat16, rows=9, cols=96),
              _layer("2:4 quant", torch.float16, 4, 32, rows=70, cols=96))
    for packed in layers:
        for tokens in (1, 7):
            x = _tokens(tokens, packed)
            _assert_product(compressed_matmul(x, packed), x, packed)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["quant", "2:4", "2:4 quant"])
def test_kernels_decompress_exactly_the_stored_weights(kind, dtype):
    # One-hot tokens pick columns of W: every weight the kernel rebuilds must be decompress_weight's.
    packed = _layer(kind, dtype, 4, 64)
    W = decompress_weight(packed)  # (R, C)
    columns = torch.arange(16, device=DEVICE) * 15 + 7  # across the tiles and positions in a group
    picks = torch.eye(COLS, dtype=dtype, device=DEVICE)[columns]  # (16, C)
    assert torch.equal(compressed_matmul(picks, packed), W[:, columns].t())
    assert torch.equal(compressed_matmul(picks[5:6], packed), W[:, columns[5:6]].t())  # one token


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_n}x{c.block_k}/split{c.split_k}")
def test_every_tuning_candidate_computes_the_product(config):
    # A split with no tile (4 splits of 2 tiles) must add nothing; partial row tiles are not stored.
    for packed in (_layer("quant", torch.float16, 4, 128), _layer("2:4 quant", torch.bfloat16, 4, None)):
        for tokens in (1, 3):
            x = _tokens(tokens, packed)
            _assert_product(launch(x, packed, config), x, packed)


@pytest.mark.parametrize("spec", [
    LayerSpec("quant", (4096, 4096), "float16", bits=4, group_size=128, sym=False),
    LayerSpec("quant", (4096, 11008), "bfloat16", bits=8, group_size=None, sym=True),
    LayerSpec("quant", (11008, 4096), "float16", bits=3, group_size=64, sym=False),
    LayerSpec("nm", (4096, 4096), "bfloat16", n=2, m=4),
    LayerSpec("nm", (4096, 11008), "float16", n=2, m=4, bits=4, group_size=128, sym=True),
])
def test_supports_the_kernels_layers(spec):
    assert all(supports(spec, tokens) for tokens in range(1, 17))


@pytest.mark.parametrize("spec, tokens", [
    (LayerSpec("quant", (64, 256), "float16", bits=4, group_size=64, sym=False), 0),
    (LayerSpec("quant", (64, 256), "float16", bits=4, group_size=64, sym=False), 17),
    (LayerSpec("quant", (64, 256), "float32", bits=4, group_size=64, sym=False), 1),
    (LayerSpec("quant", (64, 256), "float16", bits=2, group_size=64, sym=False), 1),
    (LayerSpec("quant", (64, 240), "float16", bits=4, group_size=24, sym=False), 1),  # 8-column tiles
    (LayerSpec("quant", (64, 264), "bfloat16", bits=4, group_size=None, sym=False), 1),  # 264 = 8 x 33
    (LayerSpec("quant", (64, 256), "float16", bits=4, group_size=96, sym=False), 1),  # does not divide 256
    (LayerSpec("nm", (64, 256), "float16", n=4, m=8), 1),
    (LayerSpec("nm", (64, 256), "float32", n=2, m=4), 1),
    (LayerSpec("nm", (64, 272), "float16", n=2, m=4), 1),  # 16 x 17: no 32-column tile
    (LayerSpec("nm", (64, 256), "float16", n=2, m=4, bits=2, group_size=None, sym=False), 1),
    (LayerSpec("bitmask", (64, 256), "float16", bits=4, group_size=64, sym=False), 1),
    (LayerSpec("bitmask", (64, 256), "bfloat16"), 1),
])
def test_supports_refuses_what_has_no_kernel(spec, tokens):
    assert not supports(spec, tokens)


def test_compressed_matmul_refuses_what_has_no_kernel():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 128, generator=gen)
    unstructured = weight * (torch.rand(24, 128, generator=gen) < 0.3)
    on_grid, grid = _on_grid(weight, 4, 64, False)
    sparse_on_grid, sparse_grid = _on_grid(unstructured, 4, 64, False)
    every_eighth = torch.zeros(24, 128, dtype=torch.float16).index_fill_(1, torch.arange(0, 128, 8), 1.0)
    layers = [
        compress_weight(on_grid, grid),  # float32 codes
        compress_weight(unstructured.half()),  # bitmask
        compress_weight(sparse_on_grid.half(), sparse_grid),  # bitmask + 4-bit
        compress_weight(every_eighth, nm=(4, 8)),
    ]
    assert [layer.spec.layout for layer in layers] == ["quant", "bitmask", "bitmask", "nm"]
    for layer in layers:
        layer = CompressedWeight(layer.spec, {name: t.to(DEVICE) for name, t in layer.tensors.items()})
        x = torch.randn(1, 128, device=DEVICE).to(decompress_weight(layer).dtype)
        with pytest.raises(ValueError):
            compressed_matmul(x, layer)

    packed = _layer("quant", torch.float16, 4, 64)
    with pytest.raises(ValueError, match="17 tokens"):
        compressed_matmul(_tokens(17, packed), packed)
    with pytest.raises(ValueError, match="does not fit"):
        compressed_matmul(_tokens(2, packed).to(torch.bfloat16), packed)  # not the layer's dtype
    with pytest.raises(ValueError, match="does not fit"):
        compressed_matmul(_tokens(2, packed)[:, :128], packed)  # not its width


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_not_available_without_cuda_even_with_the_interpreter():
    assert not available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind, bits, group_size", [("quant", 4, 128), ("quant", 8, None), ("2:4", None, None),
                                                    ("2:4 quant", 4, 128)])
def test_compiled_kernels_at_a_llama_7b_shape(kind, bits, group_size):
    assert available()
    packed = _layer(kind, torch.float16, bits or 4, group_size, rows=11008, cols=4096)
    for tokens in (1, 16):
        x = _tokens(tokens, packed)
        _assert_product(compressed_matmul(x, packed), x, packed)  # tuned on the first call, then cached
        _assert_product(compressed_matmul(x, packed), x, packed)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind, bits, group_size", [
    ("quant", 4, 32), ("quant", 8, None), ("quant", 3, 64), ("2:4", 4, None), ("2:4 quant", 4, 64),
    ("2:4 quant", 8, None),
])
def test_expand_writes_the_decompressed_weight_bit_for_bit(kind, bits, group_size, dtype):
    from prunellm.runtime.kernels import can_expand, expand

    packed = _layer(kind, dtype, bits, group_size, rows=37)  # 37 rows: a partial row tile
    assert can_expand(packed.spec)
    assert torch.equal(expand(packed), decompress_weight(packed))


def test_expand_refuses_a_layout_it_does_not_read():
    from prunellm.runtime.kernels import can_expand, expand

    weight = torch.randn(8, 64)
    weight[torch.rand(8, 64) < 0.6] = 0
    packed = compress_weight(weight.half())  # a bitmask
    assert not can_expand(packed.spec)
    with pytest.raises(ValueError, match="bitmask"):
        expand(packed)

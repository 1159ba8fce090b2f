"""GGUF block grids: what the solver rounds onto is exactly what the gguf package reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.formats.gguf.pack import pack_gguf_blocks
from prunellm.solvers import GPTQConfig, SparseGPTConfig, gptq, relative_layer_error, sparsegpt
from prunellm.solvers.gguf_grids import (GGUF_GRIDS, GGUFBlocks, fit_gguf_blocks, gguf_grid, layer_gguf_type,
                                         mixed_layer_type)

from ..conftest import layer_problem

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

ZERO_HOLDING = [name for name, grid in GGUF_GRIDS.items() if grid.holds_zero]


def gguf_values(blocks: GGUFBlocks, weight: torch.Tensor) -> np.ndarray:
    """What llama.cpp's readers get back from the bytes prunellm writes."""
    raw = pack_gguf_blocks(blocks, weight)
    return dequantize(raw, gguf.GGMLQuantizationType[blocks.type.upper()])


def sparse_weight(rows: int = 16, cols: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen) * 0.05
    W[:, :7] *= 20  # outlier columns stretch some blocks' range
    W[W.abs() < 0.03] = 0.0  # about half the weights pruned
    W[3, 32:64] = 0.0  # an all-zero block
    W[4, 64:96] = 0.01  # a constant positive block
    return W


@pytest.mark.parametrize("name", list(GGUF_GRIDS))
@pytest.mark.parametrize("keep_zero", [False, True])
def test_round_trip_is_bit_exact(name: str, keep_zero: bool) -> None:
    W = sparse_weight()
    blocks = fit_gguf_blocks(name, W, keep_zero=keep_zero)
    on_grid = blocks.round(W)
    assert np.array_equal(gguf_values(blocks, on_grid), on_grid.numpy())
    assert torch.equal(blocks.round(on_grid), on_grid)  # the grid is a fixed point: export loses nothing


@pytest.mark.parametrize("name", ZERO_HOLDING)
def test_zeros_stay_zero_on_grids_that_hold_zero(name: str) -> None:
    W = sparse_weight(seed=1)
    on_grid = fit_gguf_blocks(name, W, keep_zero=True).round(W)
    assert (on_grid[W == 0] == 0).all()


def test_q4_k_cannot_keep_zeros_and_says_so() -> None:
    assert not gguf_grid("q4_k").holds_zero
    W, H = layer_problem(rows=8, cols=256)
    with pytest.raises(PrunellmError, match="q4_k cannot keep pruned weights"):
        sparsegpt(W, H, SparseGPTConfig(sparsity=0.5, gguf="q4_k"))
    with pytest.raises(PrunellmError, match="cannot keep"):
        SparseGPTConfig(sparsity=0.5, gguf="q4_k_m")


def test_group_size_the_type_cannot_hold_is_refused() -> None:
    with pytest.raises(PrunellmError, match="q4_0 stores one scale per 32 inputs; group_size 128"):
        GPTQConfig(gguf="q4_0", group_size=128)
    with pytest.raises(PrunellmError, match="bits 4 and GGUF type q4_0"):
        SparseGPTConfig(bits=4, gguf="q4_0")
    with pytest.raises(PrunellmError, match="unknown GGUF type 'q3_x'"):
        GPTQConfig(gguf="q3_x")


def test_k_quants_fall_back_like_llama_cpp_for_widths_256_does_not_divide() -> None:
    assert layer_gguf_type("q4_k", 640) == "q5_0"  # Gemma-3-270M's hidden size
    assert layer_gguf_type("q6_k", 640) == "q8_0"
    assert layer_gguf_type("q4_k", 1536) == "q4_k"
    W, H = layer_problem(rows=8, cols=96)
    assert gptq(W, H, GPTQConfig(gguf="q4_k")).grid.type == "q5_0"
    with pytest.raises(PrunellmError, match="in_features 48 is not a multiple of 32"):
        gptq(*layer_problem(rows=8, cols=48), GPTQConfig(gguf="q4_0"))


def test_q3_k_and_q5_k_fall_back_like_llama_cpp() -> None:
    assert layer_gguf_type("q3_k", 640) == "q4_0"
    assert layer_gguf_type("q5_k", 640) == "q5_1"
    assert layer_gguf_type("q5_k", 512) == "q5_k"


def test_q5_k_m_gives_q6_k_where_q4_k_m_does() -> None:
    n = 30
    for role in ("attn_v", "ffn_down", "attn_q", "attn_output", None):
        for i in range(n):
            q4, q5 = mixed_layer_type("q4_k_m", role, i, n), mixed_layer_type("q5_k_m", role, i, n)
            assert (q4, q5) in (("q6_k", "q6_k"), ("q4_k", "q5_k"))
    assert mixed_layer_type("q5_k_m", "ffn_down", 0, n) == "q6_k"


def test_q3_k_m_mixture_follows_llama_cpps_rules() -> None:
    n = 32
    assert [mixed_layer_type("q3_k_m", "attn_v", i, n) for i in range(4)] == ["q5_k", "q5_k", "q4_k", "q4_k"]
    assert [mixed_layer_type("q3_k_m", "ffn_down", i, n) for i in range(3)] == ["q5_k", "q5_k", "q4_k"]
    assert {mixed_layer_type("q3_k_m", "attn_output", i, n) for i in range(n)} == {"q4_k"}
    assert {mixed_layer_type("q3_k_m", role, i, n) for role in ("attn_q", "attn_k", "ffn_up", "ffn_gate", None)
            for i in range(n)} == {"q3_k"}


@pytest.mark.parametrize("mix", ["q3_k_m", "q5_k_m"])
def test_mixtures_with_a_type_that_cannot_keep_zeros_refuse_pruning(mix: str) -> None:
    with pytest.raises(PrunellmError, match=rf"\(which {mix} gives some layers\) cannot keep pruned weights"):
        SparseGPTConfig(sparsity=0.5, gguf=mix)


def test_q4_k_m_mixture_follows_llama_cpps_use_more_bits_rule() -> None:
    n = 30  # SmolLM2's depth
    more = [i for i in range(n) if mixed_layer_type("q4_k_m", "ffn_down", i, n) == "q6_k"]
    expected = [i for i in range(n) if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2]
    assert more == expected and 0 < len(more) < n
    assert mixed_layer_type("q4_k_m", "attn_q", 0, n) == "q4_k"
    assert mixed_layer_type("q4_0", "ffn_down", 0, n) == "q4_0"


@pytest.mark.parametrize("name", ["q4_0", "q5_1", "q8_0", "q3_k", "q4_k", "q5_k", "q6_k"])
def test_gptq_onto_gguf_beats_round_to_nearest_and_exports_exactly(name: str) -> None:
    W, H = layer_problem(rows=32, cols=256)
    importance = torch.diagonal(H)
    rtn = fit_gguf_blocks(name, W, keep_zero=False, importance=importance)
    for act_order in (True, False):
        result = gptq(W, H, GPTQConfig(gguf=name, act_order=act_order))
        assert result.grid.type == name
        assert np.array_equal(gguf_values(result.grid, result.weight), result.weight.numpy())
        assert relative_layer_error(W, result.weight, H) < relative_layer_error(W, rtn.round(W), H)


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q4_1", "q8_0", "q3_k", "q6_k"])
@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"nm": "2:4"}])
def test_sparsegpt_onto_gguf_keeps_its_zeros_and_exports_exactly(name: str, pattern: dict) -> None:
    W, H = layer_problem(rows=32, cols=256)
    result = sparsegpt(W, H, SparseGPTConfig(gguf=name, **pattern))
    assert np.array_equal(gguf_values(result.grid, result.weight), result.weight.numpy())
    assert torch.equal(result.weight[result.mask], torch.zeros(int(result.mask.sum())))
    assert result.sparsity >= 0.5
    unquantized = sparsegpt(W, H, SparseGPTConfig(**pattern))
    # Quantization adds error, but on the same order as the pruning's own: the grid was fitted
    # as the sweep went, not fixed from the dense weight.
    assert relative_layer_error(W, result.weight, H) < 1.5 * relative_layer_error(W, unquantized.weight, H) + 0.01


def test_searched_scale_lowers_the_weighted_rounding_error() -> None:
    W, H = layer_problem(rows=32, cols=256)
    h = torch.diagonal(H)
    searched = fit_gguf_blocks("q4_0", W, keep_zero=False, importance=h).round(W)
    # llama.cpp's plain rule: the largest-magnitude weight of a block maps to -8.
    blocks = W.reshape(-1, 32)
    top = torch.gather(blocks, 1, blocks.abs().argmax(1, keepdim=True))
    d = (top / -8).half().float()
    plain = (torch.clamp(torch.round(blocks / d), -8, 7) * d).reshape(W.shape)
    weighted = lambda V: float(((W - V) ** 2 * h).sum())  # noqa: E731
    assert weighted(searched) < weighted(plain)


def test_q4_k_searched_scale_and_min_lower_the_weighted_rounding_error() -> None:
    W, H = layer_problem(rows=32, cols=256)
    h = torch.diagonal(H)
    searched = fit_gguf_blocks("q4_k", W, keep_zero=False, importance=h).round(W)
    # Min-max rule for every sub-block of 32: min (never above 0) to code 0, max to code 15.
    subs = W.reshape(32, 8, 32)
    low = torch.clamp(subs.amin(-1), max=0.0)  # (rows, 8)
    scale = (subs.amax(-1) - low) / 15
    d, dmin = (scale.amax(-1) / 63).half().float(), (-low).amax(-1).div(63).half().float()  # (rows,)
    s = torch.round(scale / d[:, None]) * d[:, None]
    m = torch.round(-low / dmin[:, None]) * dmin[:, None]
    q = torch.clamp(torch.round((subs + m[..., None]) / s[..., None]), 0, 15)
    minmax = (q * s[..., None] - m[..., None]).reshape(W.shape)
    weighted = lambda V: float(((W - V) ** 2 * h).sum())  # noqa: E731
    assert weighted(searched) < 0.95 * weighted(minmax)


def test_gptq_with_a_fully_shrunk_hessian_is_importance_weighted_rounding() -> None:
    from prunellm.solvers import shrink_to_diagonal

    W, H = layer_problem(rows=16, cols=128)
    diagonal = shrink_to_diagonal(H, 1.0)
    result = gptq(W, diagonal, GPTQConfig(gguf="q4_0", refit_scales=False))
    rounded = fit_gguf_blocks("q4_0", W, keep_zero=False, importance=torch.diagonal(H)).round(W)
    torch.testing.assert_close(result.weight, rounded, rtol=0, atol=0)  # nothing to compensate


def test_refitting_block_scales_never_raises_the_layer_error() -> None:
    from prunellm.solvers.gguf_refit import refit_block_scales

    for seed in range(3):
        W, H = layer_problem(rows=32, cols=256, seed=seed)
        plain = gptq(W, H, GPTQConfig(gguf="q4_0", refit_scales=False))
        weight, blocks = refit_block_scales(W, H, plain.weight, plain.grid)
        assert relative_layer_error(W, weight, H) <= relative_layer_error(W, plain.weight, H)
        assert torch.equal(blocks.round(weight), weight)  # still exactly on the stored grid
        assert torch.equal(blocks.codes(weight), plain.grid.codes(plain.weight))  # same codes

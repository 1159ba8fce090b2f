"""Int8 activations (runtime/int8_activations.py): the opt-in int8 kernels of 4- and 8-bit layers.

Every level this CPU runs (the portable one among them) gives, for every layer the int8 kernel
reads and 1 to 16 tokens, the product of the activations rounded as `round_activations` rounds
them and the grid's float32 weights scale * (code - zero), within float32 rounding of the sum;
the kernels round the activations exactly as the Python reference does (nearest even, ties
included); a prefill's expanded product rounds them the same way; `prunellm.load(...,
int8_activations=True)` turns it on for the quantized layers (here a 4-bit head) and refuses a
model with none, in one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache

import prunellm
from prunellm.devices import cpu_has
from prunellm.errors import PrunellmError
from prunellm.formats.compressed.layer import CompressedWeight, compress_weight, decompress_weight
from prunellm.runtime import cpu_kernels, token_limits
from prunellm.runtime.bench_infer import cache_argument
from prunellm.runtime.int8_activations import BLOCK, quantize_activations, reads, round_activations, \
    use_int8_activations
from prunellm.runtime.linear import CompressedLinear
from prunellm.solvers.quant import QuantGrid
from tests.model_dirs import save_run
from tests.runtime.test_cpu_kernels import CASES, ROWS, _layer
from tests.tiny_models import tiny_config

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="native CPU kernels not built (no C++ compiler at install)")


def _int8_native(packed: CompressedWeight) -> cpu_kernels.NativeWeight:
    native = cpu_kernels.prepare(packed.spec, packed.tensors)
    native.int8_activations = True
    return native


def _grid_weight(packed: CompressedWeight) -> torch.Tensor:
    """scale * (code - zero) in float32, before the rounding to the layer's dtype."""
    return decompress_weight(CompressedWeight(dataclasses.replace(packed.spec, dtype="float32"), packed.tensors))


@pytest.fixture(scope="module")
def int8_layers() -> dict[str, tuple[torch.Tensor, cpu_kernels.NativeWeight]]:
    built = {}
    for case in CASES:
        packed = _layer(case)
        native = _int8_native(packed)
        if reads(native):
            built[case] = (_grid_weight(packed), native)
    return built


INT8_CASES = [case for case in CASES if case.startswith("q") and case.split(":")[1] in ("4", "8")
              and case.split(":")[2] in ("row", "64", "128", "256")]


def _close(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rel: float = 1e-4) -> None:
    rounded = round_activations(x)  # (T, C) float32
    reference = rounded @ weight.T
    magnitude = rounded.abs() @ weight.abs().T
    error = (y.float() - reference).abs()
    assert bool((error <= rel * magnitude + 1e-6).all()), f"max error {float((error - rel * magnitude).max()):.3g}"


def test_the_int8_cases_cover_every_layout() -> None:
    kinds = {case.split(":")[0] for case in INT8_CASES}
    assert {"qbitmask", "qnm2-4", "qquant"} <= kinds and {c.split(":")[1] for c in INT8_CASES} == {"4", "8"}


@pytest.mark.parametrize("case", INT8_CASES)
def test_the_int8_kernel_multiplies_the_rounded_activations_by_the_grid(int8_layers, level, case) -> None:
    weight, native = int8_layers[case]
    for tokens in (1, 2, 4, 5, 16):
        x = torch.randn(tokens, weight.shape[1], generator=torch.Generator().manual_seed(tokens)) * 3
        y = cpu_kernels.matmul(x, native)
        assert y.shape == (tokens, ROWS)
        _close(y, x, weight)
        xb = x.to(torch.bfloat16)  # bfloat16 activations: rounded from their exact float32 values
        _close(cpu_kernels.matmul(xb, native), xb.float(), weight, rel=4e-3)


# Wider than one panel of 9-16 tokens (int8.cpp's panels: 1024 to 1792 columns), in segments
# of two steps (groups of 128, or a row of 2304 columns) and of one (groups of 64; a row of 2240,
# 35 steps, an odd number).
WIDE_INT8_CASES = ["qbitmask:4:128:2304", "qbitmask:8:64:2240", "qnm2-4:4:128:2304:bfloat16", "qquant:8:128:2304",
                   "qquant:4:row:2240", "qbitmask:4:row:2304:bfloat16"]


@pytest.mark.parametrize("case", WIDE_INT8_CASES)
def test_calls_of_nine_to_sixteen_tokens_carry_their_sums_across_panels(level, threads, case) -> None:
    packed = _layer(case)
    weight, native = _grid_weight(packed), _int8_native(packed)
    assert reads(native)
    for tokens in (9, 12, 16):  # 37 rows: chunks of 8 and a remainder
        x = torch.randn(tokens, weight.shape[1], generator=torch.Generator().manual_seed(tokens)) * 3
        _close(cpu_kernels.matmul(x, native), x, weight)


@pytest.mark.parametrize("case", ["qbitmask:4:128:384", "qnm2-4:4:64:256:bfloat16", "qquant:8:row:200"])
def test_every_thread_team_gives_the_same_rows(int8_layers, level, threads, case) -> None:
    weight, native = int8_layers[case]
    x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(1))
    _close(cpu_kernels.matmul(x, native), x, weight)


def test_the_kernels_round_as_the_reference_ties_to_even(level) -> None:
    """One-hot rows (8-bit codes, weight 1 on column r of row r) give back each activation as the
    kernel rounded it: equal to round_activations' value, where one step of q would be 1/127 of
    the block's largest. The first block's scale is exactly 1 (largest 127), so its x.5 values are
    ties, rounded to even."""
    cols = 3 * BLOCK - 64  # a last block of one step
    weight = torch.eye(cols)
    grid = QuantGrid(8, False, None, torch.full((cols, 1), 1 / 255), torch.zeros(cols, 1))
    packed = compress_weight(weight * 0 + grid.scale.expand(cols, cols) * torch.round(weight * 255), grid)
    native = _int8_native(packed)
    exact = _grid_weight(packed)
    x = torch.randn(2, cols, generator=torch.Generator().manual_seed(0))
    x[0, 0] = 127.0
    x[0, 1:9] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])
    y = cpu_kernels.matmul(x, native)
    expected = round_activations(x) @ exact.T
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=0)
    q, scale = quantize_activations(x)
    assert scale[0, 0] == 1.0 and q[0, 1:9].tolist() == [0, 2, 2, 0, -2, -2, 126, -126]


def test_zero_blocks_and_large_values_round_safely() -> None:
    x = torch.zeros(2, 300)
    x[1, 5] = 3e38
    x[1, 130] = -1e-30
    rounded = round_activations(x)
    assert torch.equal(rounded[0], x[0]) and bool(torch.isfinite(rounded).all())
    assert rounded[1, 5] == pytest.approx(3e38, rel=1e-6) and rounded[1, 130] == pytest.approx(-1e-30, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (3, 300), (2, 5, 130), (17, 1000)])
def test_the_kernels_rounding_is_the_references_bit_for_bit(level, dtype, shape) -> None:
    """cpu_kernels.int8_rounded (the prefill's rounding, in the kernels' code at each level) gives
    round_activations' float32 values exactly: ties, zero blocks, huge and tiny values included."""
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(shape[-1])) * 4).to(dtype)
    flat = x.view(-1, shape[-1])
    flat[0, 0] = 127.0
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])[:min(8, shape[-1] - 1)]
    flat[0, 1:1 + ties.numel()] = ties.to(dtype)
    if flat.shape[0] > 1:
        flat[1].zero_()
        flat[1, -1] = {torch.float32: 3e38, torch.bfloat16: 1e38, torch.float16: 6e4}[dtype]
    expected = round_activations(x)
    got = cpu_kernels.int8_rounded(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.equal(got, expected)


def test_the_kernels_rounding_refuses_a_non_float_tensor_in_one_line() -> None:
    with pytest.raises(PrunellmError, match="float dtype"):
        cpu_kernels.int8_rounded(torch.zeros(2, 64, dtype=torch.int32))


def test_each_level_names_its_int8_kernel_and_only_the_scalar_one_warns(level, caplog) -> None:
    """The int8 kernel by level: the portable level's is the scalar one (a warning, a 1-token
    limit), the avx2 level's vpmaddubsw one, an AVX-512 level's the VNNI one where the CPU has
    AVX512_VNNI (else AVX2's); each layer's token limit is its kernel's."""
    kernel = cpu_kernels.int8_kernel()
    if level == "portable":
        assert kernel == "scalar"
    elif level == "avx2":
        assert kernel == "avx2"
    else:
        assert kernel == ("vnni" if cpu_has("avx512_vnni") else "avx2")
    layer = CompressedLinear(_layer("qbitmask:4:128:384"))
    assert layer.prepare_cpu()
    with caplog.at_level("WARNING"):
        use_int8_activations(nn.Sequential(layer))
    assert ("lacks AVX2" in caplog.text) == (kernel == "scalar")
    assert layer.cpu_kernel_max_tokens(torch.float32) == token_limits.INT8_LIMITS[kernel]


def test_a_prefill_rounds_the_activations_as_the_kernel(int8_layers) -> None:
    """A call above the kernel's token limit expands the layer: its rows equal the 1-token kernel
    calls' within float32 rounding (the same rounded activations, the same grid)."""
    packed = _layer("qbitmask:4:128:384")
    layer = CompressedLinear(packed)
    assert layer.prepare_cpu()
    assert use_int8_activations(nn.Sequential(layer)) == 1 and layer.int8_activations
    assert layer.cpu_kernel_max_tokens(torch.bfloat16) == token_limits.int8_limit(cpu_kernels.int8_kernel())
    x = torch.randn(40, 384, generator=torch.Generator().manual_seed(2))
    assert x.shape[0] > layer.cpu_kernel_max_tokens(x.dtype)
    prefill = layer(x)
    one_by_one = torch.cat([layer(x[t:t + 1]) for t in range(x.shape[0])])
    _close(prefill, x, _grid_weight(packed))
    _close(one_by_one, x, _grid_weight(packed))
    assert "int8 activations" in repr(layer)


def test_a_model_without_codes_is_refused_in_one_line() -> None:
    layer = CompressedLinear(_layer("bitmask:bfloat16:0.5"))
    assert layer.prepare_cpu()
    with pytest.raises(PrunellmError, match="no layer of this model is 4- or 8-bit codes"):
        use_int8_activations(nn.Sequential(layer))


def test_load_turns_it_on_for_a_quantized_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    directory = save_run(model, torch.float32, "compressed", tmp_path / "run", method="magnitude")
    exact = prunellm.load(directory, "cpu", head_bits=4)
    rounded = prunellm.load(directory, "cpu", head_bits=4, int8_activations=True)
    head = rounded.get_output_embeddings()
    assert head.int8_activations and head.native.int8_activations
    assert not any(m.int8_activations for m in rounded.model.modules() if isinstance(m, CompressedLinear))
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        a, b = exact(ids).logits, rounded(ids).logits
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.05 * float(a.abs().max()))
    with pytest.raises(PrunellmError, match="no layer of this model"):
        prunellm.load(directory, "cpu", int8_activations=True)


def test_decoding_token_by_token_gives_the_prefills_logits(tmp_path: Path) -> None:
    """The scoring path (a window's prefill: expanded products on rounded activations) and decode
    (one token a call: the int8 kernel) give the same logits within float32 rounding: a
    perplexity scored on windows is the decoding model's."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    directory = save_run(model, torch.float32, "compressed", tmp_path / "run", method="magnitude")
    loaded = prunellm.load(directory, "cpu", head_bits=4, int8_activations=True)
    ids = torch.tensor([[1, 5, 9, 2, 7, 7, 3, 11, 4, 6, 8, 10, 12, 13, 2, 9, 14, 5, 1, 3]])
    assert ids.shape[1] > loaded.get_output_embeddings().cpu_kernel_max_tokens(torch.float32)
    with torch.no_grad():
        prefill = loaded(ids).logits  # (1, 20, V)
        cache, steps = DynamicCache(), []
        for position in range(ids.shape[1]):
            out = loaded(ids[:, position:position + 1], use_cache=True, **{cache_argument(loaded): cache})
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), prefill, rtol=1e-4, atol=1e-4 * float(prefill.abs().max()))

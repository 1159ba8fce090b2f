"""A decoder block's decode step as one native call (runtime/decode_block.py) against the torch
operations of runtime/decode_loop.py it replaces.

The block rounds where the torch loop rounds; only the order of the sums in the norms'
statistics and in attention differs. So from the same state one block's output equals the torch
loop's in float32 up to float rounding, and in bfloat16 up to one unit in the last place on a few
elements; over many steps the two loops' logits stay within bfloat16 rounding. Shapes are odd on
purpose: heads of 24 dimensions (not a multiple of the 16 lanes attention sums in) and of 64 (the
AVX-512 attention's path, 16 positions' scores at a time), widths of 96 and 100 (not multiples of
64), grouped-query and plain heads, Qwen2's biases, more cached positions than lanes. Every kernel
level this CPU runs and the portable one, one and two threads, torch's OpenMP team and the
library's own pool (in pairs: each level on two threads, each team on the best level).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

import prunellm
from prunellm.runtime import cpu_kernels
from prunellm.runtime.decode_block import NativeBlocks, qualifies
from prunellm.runtime.decode_loop import DecodeLoop
from tests.model_dirs import save_run
from tests.tiny_models import VOCAB, tokens

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="native CPU kernels not built (no C++ compiler at install)")

CONFIGS = {
    # 8 query heads of 24 on 2 key/value heads, tied head
    "llama": lambda layers: LlamaConfig(hidden_size=128, intermediate_size=192, num_hidden_layers=layers,
                                        num_attention_heads=8, num_key_value_heads=2, head_dim=24,
                                        vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=True),
    # widths no multiple of 64 (a dense layer is read in place only at multiples of 64: compressed only)
    "llama-odd": lambda layers: LlamaConfig(hidden_size=96, intermediate_size=100, num_hidden_layers=layers,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                            max_position_embeddings=256, tie_word_embeddings=False),
    # heads of 64 (AVX-512 attention's register path: rows of four 16-float chunks), 3 query heads
    # a key/value head
    "llama-wide": lambda layers: LlamaConfig(hidden_size=192, intermediate_size=128, num_hidden_layers=layers,
                                             num_attention_heads=6, num_key_value_heads=2, head_dim=64,
                                             vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=False),
    # q/k/v biases, one key/value head per query head
    "qwen2": lambda layers: Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB,
                                        max_position_embeddings=256, tie_word_embeddings=False),
}
KINDS = [("bfloat16", "dense"), ("bfloat16", "compressed"), ("float32", "compressed")]
# Rows per step: a dense layer's kernel takes one token on every level (runtime/token_limits.py),
# a compressed layer's at least two.
BATCH = {"dense": 1, "compressed": 2}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _model(arch: str, layers: int, hidden_act: str = "silu", positions: int = 256) -> torch.nn.Module:
    config = CONFIGS[arch](layers)
    config.hidden_act, config.max_position_embeddings = hidden_act, positions
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    if arch == "qwen2":  # biases drawn like weights, so that adding them shows
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model


def _save(model: torch.nn.Module, dtype: str, kind: str, out: Path) -> Path:
    return save_run(model, DTYPES[dtype], kind, out, method="magnitude")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[tuple[str, int, str, str], Path]:
    root = tmp_path_factory.mktemp("decode-block")
    return {(arch, layers, dtype, kind): _save(_model(arch, layers), dtype, kind, root / f"{arch}{layers}-{dtype}-{kind}")
            for arch, dtype, kind in _cases() for layers in (1, 3)}


def _cases() -> list[tuple[str, str, str]]:
    return [(arch, dtype, kind) for arch in sorted(CONFIGS) for dtype, kind in KINDS
            if not (arch == "llama-odd" and kind == "dense")]


def _loops(directory: Path, batch: int, length: int) -> tuple[DecodeLoop, DecodeLoop]:
    model = prunellm.load(directory, "cpu")
    native, plain = DecodeLoop(model, length, batch), DecodeLoop(model, length, batch, native_blocks=False)
    assert native.blocks is not None and plain.blocks is None
    return native, plain


def _ulp(reference: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of bfloat16 at each value's magnitude."""
    exponent = torch.floor(torch.log2(reference.abs().clamp_min(2.0 ** -126)))
    return torch.exp2(exponent - 7)


def _levels_and_teams() -> list[tuple[str, str]]:
    """Every level on two threads of the library's pool, and the best level on one thread and on
    torch's team: the levels' code and the teams' splitting are independent of each other, so
    their pairs (not the whole product) cover both."""
    levels = cpu_kernels.supported_levels() if cpu_kernels.available() else ["portable"]
    return ([(level, "2 threads on the library's pool") for level in levels]
            + [(levels[-1], "1 thread"), (levels[-1], "2 threads on torch's OpenMP")])


@pytest.mark.parametrize("level, threads", _levels_and_teams(), indirect=True)
@pytest.mark.parametrize("arch, dtype, kind", _cases())
def test_one_block_rounds_where_the_torch_loop_rounds(dirs, level, threads, arch: str, dtype: str, kind: str) -> None:
    """A one-block model, 20 cached positions: the block's output (read before the head, through
    the final norm) from the same cache and token."""
    batch = BATCH[kind]
    native, plain = _loops(dirs[arch, 1, dtype, kind], batch=batch, length=32)
    ids = tokens(batch, 20, seed=3)
    native.prefill(ids), plain.prefill(ids)
    native.head = plain.head = lambda hidden: hidden  # (B, C): the normed block output
    token = torch.tensor([5, 11][:batch])
    got, expected = native.step(token).float(), plain.step(token).float()
    assert got.shape == expected.shape == (batch, native.embed.embedding_dim)
    _agree(got, expected, dtype)
    for ours, theirs in ((native.keys[0], plain.keys[0]), (native.values[0], plain.values[0])):
        _agree(ours[:, :, 20], theirs[:, :, 20], dtype)  # the position written at this step


@pytest.mark.parametrize("dtype, kind", [("bfloat16", "compressed"), ("float32", "compressed")])
def test_a_long_context_splits_attention_over_the_team(tmp_path, threads, dtype: str, kind: str) -> None:
    """1400 cached positions (8 heads of 24: past the block's threshold for handing attention to
    the team, one item per key/value head): the block still gives the torch loop's output."""
    directory = _save(_model("llama", 1, positions=1500), dtype, kind, tmp_path / f"long-{dtype}")
    native, plain = _loops(directory, batch=2, length=1410)
    ids = tokens(2, 1400, seed=4)
    native.prefill(ids), plain.prefill(ids)
    native.head = plain.head = lambda hidden: hidden
    token = torch.tensor([7, 9])
    # 2 tokens x 1401 positions x 8 heads x 24 = 538K products, past kTeamAttentionProducts (2^18)
    got, expected = native.step(token).float(), plain.step(token).float()
    _agree(got, expected, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("kv_heads, heads, head_dim, threads", [(1, 12, 24, 2), (3, 6, 64, 2), (1, 6, 64, 3)])
def test_a_long_context_splits_positions_where_the_heads_do_not_share_the_team_evenly(
        tmp_path, dtype: str, kv_heads: int, heads: int, head_dim: int, threads: int) -> None:
    """One token and 1400 cached positions on one or three key/value heads (two or three threads
    would take them unevenly): the block splits each head's positions into parts, attends to
    each on the team and merges their softmaxes; the output is the torch loop's, on the plain
    loops (heads of 24) and AVX-512's register path (64)."""
    config = LlamaConfig(hidden_size=96, intermediate_size=128, num_hidden_layers=1, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=VOCAB,
                         max_position_embeddings=1500, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    directory = _save(model, dtype, "compressed", tmp_path / "split")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    threshold = cpu_kernels.set_min_part_weights(0)
    cpu_kernels.use_torch_threads(False)
    try:
        native, plain = _loops(directory, batch=1, length=1410)
        ids = tokens(1, 1400, seed=8)
        native.prefill(ids), plain.prefill(ids)
        native.head = plain.head = lambda hidden: hidden
        # 1401 positions x heads x head_dim >= 2^18 products: on the team, each head's context in
        # as many parts as even out the threads' shares (1 head on 2 or 3 threads, 3 on 2)
        parts = cpu_kernels._require().pnl_attention_parts(1, heads, kv_heads, head_dim, 1401, threads)
        assert parts == {(1, 2): 2, (3, 2): 2, (1, 3): 3}[kv_heads, threads]
        for fed in (torch.tensor([7]), torch.tensor([2])):
            _agree(native.step(fed).float(), plain.step(fed).float(), dtype)
    finally:
        cpu_kernels.use_torch_threads(True)
        cpu_kernels.set_min_part_weights(threshold)
        torch.set_num_threads(before)


def test_attention_splits_by_positions_only_where_the_heads_share_the_team_unevenly() -> None:
    """The block's choice: on the calling thread below 2^18 products or on one thread; else one
    part per key/value head where the heads fill the threads evenly, more where they do not, no
    part under 64 positions, at most 64 parts."""
    parts = cpu_kernels._require().pnl_attention_parts
    assert parts(1, 9, 3, 64, 128, 2) == 0  # SmolLM2 at 128 positions: 74K products
    assert parts(1, 9, 3, 64, 2000, 1) == 0  # one thread
    assert parts(1, 9, 3, 64, 2000, 2) == 2  # three heads on two threads
    assert parts(1, 12, 2, 128, 2000, 2) == 1  # Qwen2.5-1.5B: two heads, two threads
    assert parts(2, 8, 2, 24, 1401, 2) == 1  # four items on two threads
    assert parts(1, 64, 1, 128, 100, 2) == 1  # parts of 50 positions: too short
    assert parts(1, 64, 1, 128, 100000, 96) == 64  # capped
    assert parts(0, 9, 3, 64, 2000, 2) == -2


def _agree(got: torch.Tensor, expected: torch.Tensor, dtype: str) -> None:
    """float32: within float rounding; bfloat16: a few elements one or two units apart."""
    if dtype == "float32":
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        return
    assert bool(((got - expected).abs() <= 2 * _ulp(expected)).all())
    assert float((got != expected).float().mean()) <= 0.1


@pytest.mark.parametrize("arch, dtype, kind", _cases())
def test_the_loop_on_native_blocks_gives_the_torch_loops_logits(dirs, arch: str, dtype: str, kind: str) -> None:
    """Three blocks, 24 steps fed the same tokens: logits within the dtype's rounding."""
    native, plain = _loops(dirs[arch, 3, dtype, kind], batch=BATCH[kind], length=40)
    ids = tokens(BATCH[kind], 9, seed=5)
    got, expected = native.prefill(ids), plain.prefill(ids)
    tolerance = (1e-5, 1e-5) if dtype == "float32" else (2e-2, 2e-2)
    for step in range(24):
        fed = expected.argmax(dim=-1)
        got, expected = native.step(fed), plain.step(fed)
        assert got.dtype == expected.dtype == DTYPES[dtype]
        torch.testing.assert_close(got.float(), expected.float(), rtol=tolerance[0], atol=tolerance[1],
                                   msg=f"step {step}")
    assert native.length == plain.length == 9 + 24


@pytest.mark.parametrize("level", cpu_kernels.supported_levels() if cpu_kernels.available() else [], indirect=True)
@pytest.mark.parametrize("arch, kind", [("llama", "dense"), ("llama-wide", "compressed"), ("qwen2", "compressed")])
def test_a_bfloat16_cache_gives_the_float32_caches_logits_bit_for_bit(dirs, level, arch: str, kind: str) -> None:
    """A bfloat16 model's native blocks keep keys and values in bfloat16 (they are bfloat16
    already): 24 steps give exactly the logits of the same blocks on a float32 cache, on every
    level's attention (heads of 24 take the plain loops, of 64 AVX-512's register path); a
    float32 model's cache stays float32."""
    model = prunellm.load(dirs[arch, 3, "bfloat16", kind], "cpu")
    batch = BATCH[kind]
    ours = DecodeLoop(model, 40, batch)
    assert ours.blocks is not None and ours.kv_dtype == torch.bfloat16
    assert all(cache.dtype == torch.bfloat16 for cache in ours.keys + ours.values)
    wide = DecodeLoop(model, 40, batch, kv_dtype=torch.float32)
    assert wide.blocks is not None and wide.keys[0].dtype == torch.float32
    ids = tokens(batch, 9, seed=6)
    got, expected = ours.prefill(ids), wide.prefill(ids)
    for step in range(24):
        fed = expected.argmax(dim=-1)
        got, expected = ours.step(fed), wide.step(fed)
        assert torch.equal(got, expected), f"step {step}"
    for layer in range(3):
        assert torch.equal(ours.keys[layer].float(), wide.keys[layer])
        assert torch.equal(ours.values[layer].float(), wide.values[layer])
    float32 = prunellm.load(dirs[arch, 3, "float32", "compressed"], "cpu")
    assert DecodeLoop(float32, 16, BATCH["compressed"]).kv_dtype == torch.float32
    with pytest.raises(ValueError, match="cannot be torch.bfloat16"):
        DecodeLoop(float32, 16, BATCH["compressed"], kv_dtype=torch.bfloat16)


def test_a_bfloat16_cache_at_a_long_context_and_on_the_torch_path(tmp_path) -> None:
    """1400 cached positions (attention split over the team) on a bfloat16 cache: the float32
    cache's output bit for bit; and the torch operations (the loop's path at another batch size)
    read the same bfloat16 cache to the torch loop's logits on its float32 cache, bit for bit."""
    directory = _save(_model("llama", 1, positions=1500), "bfloat16", "compressed", tmp_path / "long")
    model = prunellm.load(directory, "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    threshold = cpu_kernels.set_min_part_weights(0)
    try:
        ours = DecodeLoop(model, 1410, 2)
        wide = DecodeLoop(model, 1410, 2, kv_dtype=torch.float32)
        ids, token = tokens(2, 1400, seed=4), torch.tensor([7, 9])
        ours.prefill(ids), wide.prefill(ids)
        assert torch.equal(ours.step(token), wide.step(token))
        on_torch, plain = DecodeLoop(model, 1410, 2), DecodeLoop(model, 1410, 2, native_blocks=False)
        on_torch.blocks = None  # the torch operations, on the bfloat16 cache
        assert on_torch.keys[0].dtype == torch.bfloat16 and plain.keys[0].dtype == torch.float32
        on_torch.prefill(ids), plain.prefill(ids)
        for fed in (token, torch.tensor([3, 4])):
            assert torch.equal(on_torch.step(fed), plain.step(fed))
    finally:
        cpu_kernels.set_min_part_weights(threshold)
        torch.set_num_threads(before)


def test_blocks_only_where_every_projection_runs_on_the_kernels(dirs, tmp_path) -> None:
    """A float32 dense model (torch's products), a hook on a projection, a float32 norm in a
    bfloat16 model, another activation, a batch beyond a layer's kernel limit: the torch loop."""
    float32 = prunellm.load(_save(_model("llama", 1), "float32", "dense", tmp_path / "f32"), "cpu")
    assert DecodeLoop(float32, 16).blocks is None
    assert not qualifies(float32.model.layers, torch.float32, 1)  # what bench-infer reports

    model = prunellm.load(dirs["llama", 1, "bfloat16", "compressed"], "cpu")
    assert DecodeLoop(model, 16).blocks is not None and qualifies(model.model.layers, torch.bfloat16, 1)
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *args: None)
    assert DecodeLoop(model, 16).blocks is None
    handle.remove()
    norm = model.model.layers[0].post_attention_layernorm
    kept = norm.weight
    norm.weight = torch.nn.Parameter(kept.detach().float(), requires_grad=False)  # would promote the torch loop
    assert DecodeLoop(model, 16).blocks is None
    norm.weight = kept
    limit = model.model.layers[0].self_attn.q_proj.cpu_kernel_max_tokens(torch.bfloat16)
    assert DecodeLoop(model, 16, batch_size=limit + 1).blocks is None

    gelu = prunellm.load(_save(_model("llama", 1, hidden_act="gelu"), "bfloat16", "compressed", tmp_path / "gelu"),
                         "cpu")
    assert DecodeLoop(gelu, 16).blocks is None


def test_bad_arguments_are_refused(dirs) -> None:
    """pnl_decode_block checks its arguments: a position past the cache, a dtype it does not
    round to, float32 activations on a bfloat16 cache; the loop raises rather than reading past
    its cache."""
    native, _ = _loops(dirs["llama", 1, "bfloat16", "compressed"], batch=1, length=8)
    lib = cpu_kernels._require()
    x = torch.zeros(1, native.embed.embedding_dim, dtype=torch.bfloat16)
    cos, sin = native.cos[0], native.sin[0]
    level = cpu_kernels.LEVELS[cpu_kernels.isa()]
    call = lambda pos, dtype: lib.pnl_decode_block(native.blocks.refs[0], x.data_ptr(), 1, dtype, cos.data_ptr(),  # noqa: E731
                                                    sin.data_ptr(), pos, 1, level)
    assert call(7, 2) == 0
    assert call(8, 2) == -2 and call(-1, 2) == -2  # outside the cache's 8 positions
    assert call(0, 1) == -2  # float16: not a dtype the block rounds to
    assert native.blocks.structs[0].kv_bf16 == 1
    assert call(0, 0) == -2  # float32 activations would be rounded into a bfloat16 cache
    native.blocks.structs[0].kv_bf16 = 2
    assert call(0, 2) == -2  # not a cache dtype
    native.blocks.structs[0].kv_bf16 = 1
    broken = ctypes.cast(native.blocks.refs[0], ctypes.c_void_p)
    assert lib.pnl_decode_block(broken, x.data_ptr(), 0, 2, cos.data_ptr(), sin.data_ptr(), 0, 1, level) == -2
    with pytest.raises(RuntimeError, match="code -2"):
        native.blocks.run(x, cos, sin, 8)
    assert isinstance(native.blocks, NativeBlocks)

import sys
import weakref

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.methods import build_method
from prunellm.walker import (BlockHost, ResumePoint, WalkConfig, compress_model, find_blocks, find_linear_layers,
                             read_weight, walk_blocks)
from prunellm.walker.statistics import StatisticsCollector, discover_input_groups
from tests.tiny_models import ARCHS, tiny_model, tokens

QUIET = dict(progress=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_walk_feeds_every_block_its_true_inputs(arch):
    # The captured call (masks, rotary tables, positions) must reproduce the real forward.
    model = tiny_model(arch)
    ids = tokens()
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
    seen = 0
    for step in walk_blocks(model, ids, device=torch.device("cpu"), batch_size=3):
        torch.testing.assert_close(torch.cat(step.inputs), reference[step.index], rtol=1e-5, atol=1e-5)
        seen += 1
    assert seen == len(find_blocks(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_noop_walk_leaves_outputs_unchanged(arch):
    model = tiny_model(arch)
    ids = tokens()
    with torch.no_grad():
        before = model(ids).logits
    result = compress_model(model, build_method("noop"), ids, WalkConfig(**QUIET))
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after)
    assert result.layers and all(layer.relative_error == 0 for layer in result.layers)


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsegpt_2_4_on_every_architecture(arch):
    model = tiny_model(arch)
    embeddings = model.get_input_embeddings().weight.clone()
    result = compress_model(model, build_method("sparsegpt", nm="2:4"), tokens(), WalkConfig(**QUIET))
    blocks = find_blocks(model)
    layers = {name: layer for i, block in enumerate(blocks.modules)
              for name, layer in find_linear_layers(block, blocks.name(i)).items()}
    assert {r.name for r in result.layers} == set(layers)
    for name, layer in layers.items():
        weight = read_weight(layer)  # (out, in), whatever the storage (GPT-2's Conv1D is (in, out))
        assert torch.all((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) >= 2), name
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    with torch.no_grad():
        assert torch.isfinite(model(tokens()).logits).all()


def test_layers_sharing_an_input_share_one_hessian_and_stages_follow_execution():
    model = tiny_model("llama")
    step = next(walk_blocks(model, tokens(), device=torch.device("cpu")))
    layers = find_linear_layers(step.block, step.name)
    groups = discover_input_groups(step.block, layers, lambda: step.run(0))
    short = [[name.split(".", 3)[-1] for name in group.names] for group in groups]
    assert short == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                     ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    collector = StatisticsCollector(layers, groups, device=torch.device("cpu"))
    for b in range(step.num_batches):
        collector.run(lambda: step.run(b))
    hessians = collector.hessians()
    assert hessians["model.layers.0.self_attn.q_proj"] is hessians["model.layers.0.self_attn.v_proj"]
    assert hessians["model.layers.0.mlp.down_proj"].shape == (128, 128)
    x = torch.cat(step.inputs)  # (N, T, C): the o_proj input is not this, so check q's: 2/N · XᵀX of the normed input
    normed = step.block.input_layernorm(x).reshape(-1, 64)
    torch.testing.assert_close(hessians["model.layers.0.self_attn.q_proj"], 2 / normed.shape[0] * normed.t() @ normed,
                               rtol=1e-4, atol=1e-5)


def test_statistics_stop_the_pass_after_the_last_input_and_equal_a_full_pass():
    model = tiny_model("llama")
    step = next(walk_blocks(model, tokens(), device=torch.device("cpu")))
    layers = find_linear_layers(step.block, step.name)
    groups = discover_input_groups(step.block, layers, lambda: step.run(0))
    ran: list[str] = []
    handle = step.block.mlp.down_proj.register_forward_hook(lambda *_: ran.append("down_proj"))
    try:
        early = StatisticsCollector(layers, groups, device=torch.device("cpu"))
        full = StatisticsCollector(layers, groups, device=torch.device("cpu"), stop_early=False)
        for collector in (early, full):
            ran.clear()
            for b in range(step.num_batches):
                collector.run(lambda: step.run(b))
            collector.remove()
            if collector is early:
                assert ran == []  # down_proj's own product never ran: its input was all that was needed
    finally:
        handle.remove()
    assert ran == ["down_proj"] * step.num_batches
    for name, hessian in early.hessians().items():
        torch.testing.assert_close(hessian, full.hessians()[name], rtol=1e-6, atol=1e-7), name


def test_a_layer_called_twice_in_a_pass_is_accumulated_twice():
    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(8, 8, bias=False)
            self.outer = torch.nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.inner(self.outer(self.inner(x)))

    block = Twice()
    x = torch.randn(4, 8)
    layers = {"inner": block.inner, "outer": block.outer}
    groups = discover_input_groups(block, layers, lambda: block(x))
    assert [(g.names, g.calls) for g in groups] == [(["inner"], 2), (["outer"], 1)]
    collector = StatisticsCollector(layers, groups, device=torch.device("cpu"))
    collector.run(lambda: block(x))
    collector.remove()
    with torch.no_grad():
        second = block.outer(block.inner(x))
    both = torch.cat([x, second])
    torch.testing.assert_close(collector.hessians()["inner"], 2 / 8 * both.t() @ both)


def test_true_sequential_runs_and_differs():
    ids = tokens()
    plain, sequential = tiny_model("llama"), tiny_model("llama")
    compress_model(plain, build_method("sparsegpt"), ids, WalkConfig(**QUIET))
    result = compress_model(sequential, build_method("sparsegpt"), ids, WalkConfig(true_sequential=True, **QUIET))
    assert len(result.layers) == 21
    first_o = "model.layers.0.self_attn.o_proj"
    # q/k/v are identical either way; o_proj then sees the pruned attention's output
    assert torch.equal(plain.model.layers[0].self_attn.q_proj.weight, sequential.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(plain.get_submodule(first_o).weight, sequential.get_submodule(first_o).weight)


def test_include_exclude_and_block_range():
    model = tiny_model("llama")
    before = {name: p.clone() for name, p in model.named_parameters()}
    config = WalkConfig(first_block=1, last_block=1, include=("mlp.*",), exclude=("*down_proj",), **QUIET)
    result = compress_model(model, build_method("magnitude", sparsity=0.5), tokens(), config)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"}
    assert [r.name for r in result.layers] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]


def test_batching_and_offloading_do_not_change_the_result():
    """Batches of 4 sum the Hessians in another order than batches of 1: float32 rounding, which
    the inverse amplifies (this tiny model's 4,096 o_proj scores lie 1e-5 apart at the median),
    may flip a tied weight of a mask, and the blocks after it then see slightly other inputs.
    Anything beyond such ties would show: masks agree almost everywhere, and the two models'
    logits differ by far less than pruning moved them."""
    ids = tokens(num=4)
    a, b, dense = tiny_model("qwen2"), tiny_model("qwen2"), tiny_model("qwen2")
    compress_model(a, build_method("sparsegpt"), ids, WalkConfig(batch_size=1, **QUIET))
    compress_model(b, build_method("sparsegpt"), ids, WalkConfig(batch_size=4, offload_activations=True, **QUIET))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        flipped = ((pa == 0) != (pb == 0)).float().mean().item()
        assert flipped <= 0.005, f"{name}: {flipped:.2%} of the mask differs"
    with torch.no_grad():
        logits_a, logits_b, logits_dense = a(ids).logits, b(ids).logits, dense(ids).logits
    moved = (logits_a - logits_dense).abs().max()
    assert moved > 0.01
    assert (logits_a - logits_b).abs().max() < 0.1 * moved


def test_bad_block_range_is_refused():
    with pytest.raises(PrunellmError, match="outside the model's 3 blocks"):
        compress_model(tiny_model("llama"), build_method("noop"), tokens(), WalkConfig(last_block=7, **QUIET))


def test_extra_damping_is_reported_with_the_layer_name(caplog):
    # A Hessian made indefinite on purpose: the solver retries with more damping, the walker warns.
    from prunellm.methods.sparsegpt import SparseGPT

    class Indefinite(SparseGPT):
        def compress(self, weight, hessian, **options):
            shifted = hessian - 0.05 * torch.diagonal(hessian).mean() * torch.eye(hessian.shape[0])
            return super().compress(weight, shifted, **options)

    model = tiny_model("llama")
    with caplog.at_level("WARNING", logger="prunellm.walker.compress"):
        compress_model(model, Indefinite(sparsity=0.5), tokens(), WalkConfig(last_block=0, **QUIET))
    messages = [r.getMessage() for r in caplog.records if "not positive definite" in r.getMessage()]
    assert any("model.layers.0.self_attn.q_proj" in m for m in messages)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_auto_shrinkage_is_chosen_per_layer_on_held_out_windows_and_recorded(batch_size, monkeypatch):
    from prunellm.solvers import shrink_choice

    seen = []
    choose = shrink_choice.choose_shrink

    def spy(W, H, held_out, solve, candidates=shrink_choice.CANDIDATES):
        seen.append(held_out.share)
        return choose(W, H, held_out, solve, candidates)

    monkeypatch.setattr(sys.modules["prunellm.solvers.gptq"], "choose_shrink", spy)
    model = tiny_model("llama")
    result = compress_model(model, build_method("gptq", bits=3, hessian_shrink="auto"), tokens(num=8),
                            WalkConfig(batch_size=batch_size, **QUIET))
    assert result.layers and all(r.hessian_shrink in shrink_choice.CANDIDATES for r in result.layers)
    assert len(seen) == len(result.layers) and set(seen) == {2 / 8}  # windows 1 and 5 of 8, in any batching
    # Plain GPTQ records no choice, and its walk collects no held-out windows.
    plain = compress_model(tiny_model("llama"), build_method("gptq", bits=3), tokens(num=8), WalkConfig(**QUIET))
    assert all(r.hessian_shrink is None for r in plain.layers)


def test_auto_shrinkage_with_one_calibration_window_falls_back_to_the_plain_hessian(caplog, monkeypatch):
    monkeypatch.setattr(sys.modules["prunellm.walker.compress"], "_warned_no_held_out", False)
    model, reference = tiny_model("llama"), tiny_model("llama")
    with caplog.at_level("WARNING", logger="prunellm.walker.compress"):
        auto = compress_model(model, build_method("gptq", bits=3, hessian_shrink="auto"), tokens(num=1),
                              WalkConfig(**QUIET))
    compress_model(reference, build_method("gptq", bits=3), tokens(num=1), WalkConfig(**QUIET))
    assert all(r.hessian_shrink is None for r in auto.layers)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert sum("at least 2 calibration windows" in r.getMessage() for r in caplog.records) == 1  # once


def test_a_walk_resumed_from_saved_inputs_continues_identically():
    model, ids, cpu = tiny_model("llama"), tokens(), torch.device("cpu")
    full = {step.index: list(step.inputs) for step in walk_blocks(model, ids, device=cpu, batch_size=2)}
    resumed = {step.index: list(step.inputs)
               for step in walk_blocks(model, ids, device=cpu, batch_size=2, resume=ResumePoint(1, full[1]))}
    assert sorted(resumed) == [1, 2]
    for a, b in zip(full[2], resumed[2]):
        assert torch.equal(a, b)


def test_the_host_sees_every_block_enter_and_leave_and_the_last_leaves_without_outputs():
    class Recording(BlockHost):
        def __init__(self):
            super().__init__()
            self.events = []

        def enter(self, index, block, device):
            self.events.append(("enter", index))
            super().enter(index, block, device)

        def leave(self, index, block, outputs):
            self.events.append(("leave", index, None if outputs is None else len(outputs)))
            super().leave(index, block, outputs)

    host = Recording()
    for _ in walk_blocks(tiny_model("llama"), tokens(num=4), device=torch.device("cpu"), batch_size=2, host=host,
                         stop=1):
        pass
    assert host.events == [("enter", 0), ("leave", 0, 2), ("enter", 1), ("leave", 1, None)]


def test_the_widest_layer_goes_first_and_a_shared_hessian_is_freed_with_its_last_layer(monkeypatch):
    """down_proj, the widest layer, is solved first, and no Hessian is held past its group's last
    layer: down_proj's is gone before q is solved, q/k/v's before o, while a group's layers share one."""
    from prunellm.methods.noop import Noop

    seen: list[tuple[str, weakref.ref]] = []
    alive_at_call: list[list[str]] = []
    original = Noop.compress

    def recording(self, weight, hessian, **options):
        alive_at_call.append([shape for shape, ref in seen if ref() is not None])
        seen.append((f"{tuple(weight.shape)}#{len(seen)}", weakref.ref(hessian)))
        return original(self, weight, hessian, **options)

    monkeypatch.setattr(Noop, "compress", recording)
    model = tiny_model("llama")
    result = compress_model(model, build_method("noop"), tokens(), WalkConfig(device="cpu", first_block=0,
                                                                               last_block=0, layer_errors=False,
                                                                               **QUIET))
    # Calls: down, then q, k, v (one Hessian), o, gate, up (one).
    mlp = model.config.intermediate_size
    assert len(alive_at_call) == 7 and seen[0][0].startswith(f"({model.config.hidden_size}, {mlp})")
    assert alive_at_call[1] == []  # down_proj's Hessian, the largest, went with its solve
    assert alive_at_call[2] == [seen[1][0]]  # at k's call, q's (the same tensor) still is
    assert alive_at_call[4] == []  # at o's call, q/k/v's is gone
    assert alive_at_call[6] == [seen[5][0]]  # gate/up's, shared
    # The report lists layers in the model's order, whatever the order of the solves.
    assert [r.name.rsplit(".", 1)[-1] for r in result.layers] == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"]


def test_bf16_forwards_keep_weights_in_their_dtype_and_choose_nearly_the_same_zeros():
    ids = tokens()
    exact, fast = tiny_model("llama"), tiny_model("llama")
    compress_model(exact, build_method("sparsegpt"), ids, WalkConfig(forward_dtype="float32", **QUIET))
    compress_model(fast, build_method("sparsegpt"), ids, WalkConfig(forward_dtype="bfloat16", **QUIET))
    for (name, a), (_, b) in zip(exact.named_parameters(), fast.named_parameters()):
        assert b.dtype == torch.float32, name
        if a.dim() == 2 and "layers" in name:
            assert (b == 0).float().mean() >= 0.5
            assert ((a == 0) == (b == 0)).float().mean() > 0.9, name
    assert not all(torch.equal(a, b) for a, b in zip(exact.parameters(), fast.parameters()))  # it did change the run


def test_an_unknown_forward_dtype_is_refused_in_one_line():
    with pytest.raises(PrunellmError, match="forward dtype must be one of auto, float32, bfloat16, float16"):
        WalkConfig(forward_dtype="int8")


def test_float16_forwards_on_a_cpu_are_refused_before_any_block_is_touched():
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(PrunellmError, match="float16 is far slower than float32 on a CPU; use bfloat16"):
        compress_model(model, build_method("sparsegpt"), tokens(),
                       WalkConfig(device="cpu", forward_dtype="float16", **QUIET))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

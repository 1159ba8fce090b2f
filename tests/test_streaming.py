"""Streamed pruning: block by block from disk to disk, equal to pruning the whole model in memory."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunellm.cli import main
from prunellm.streaming import host as streaming_host
from prunellm.errors import PrunellmError
from prunellm.io import load_model, save_model
from prunellm.streaming.heap import release_free_memory
from prunellm.io.lazy import LazyCheckpoint
from prunellm.io.skeleton import Skeleton, build_skeleton
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.streaming import prune_streaming
from prunellm.walker import WalkConfig, find_blocks
from tests.model_dirs import WORDS, calibration_text, model_dir, report_without_timings, weights
from tests.tiny_models import tiny_config, tiny_model, word_tokenizer

QUIET = WalkConfig(progress=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("streaming")


@pytest.fixture(scope="module")
def llama_dir(root):
    return model_dir(root, "llama", "llama-shared")


@pytest.fixture(scope="module")
def calib(root) -> CalibrationConfig:
    return CalibrationConfig(str(calibration_text(root)), num_samples=4, seqlen=32)


# llama: untied head, grouped-query attention; gpt2: Conv1D and a tied head; gemma3: sliding and
# full attention blocks; gpt_neox: a head that transformers renames on load (embed_out).
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "gpt_neox"])
def test_streamed_output_equals_in_memory_output(arch, root, calib, tmp_path):
    source = model_dir(root, arch)
    method = build_method("sparsegpt", sparsity=0.5)
    model, tokenizer = load_model(source)
    prune(model, tokenizer, method, calib, QUIET)
    save_model(model, tokenizer, tmp_path / "memory", report={})
    run = prune_streaming(source, tmp_path / "stream", method, calib, QUIET)

    memory, stream = weights(tmp_path / "memory"), weights(run.out)
    assert memory.keys() == stream.keys()
    for name, tensor in memory.items():
        assert torch.equal(tensor, stream[name]), name
    for file in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "memory" / file).read_bytes() == (run.out / file).read_bytes(), file
    blocks = len(find_blocks(model))
    assert len(list(run.out.glob("model-*.safetensors"))) == run.report["streaming"]["shards"] >= blocks + 1
    index = json.loads((run.out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stream.values())
    reloaded = AutoModelForCausalLM.from_pretrained(run.out)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert not list(tmp_path.glob(".*"))  # the work directory is gone


def test_only_one_block_is_in_memory_at_a_time(llama_dir, calib, tmp_path, monkeypatch):
    source = llama_dir
    seen: list[tuple[str, list[int], bool]] = []  # (what was read, blocks holding weights, head holds weights)
    materialize = Skeleton.materialize

    models = []

    def watched(self: Skeleton, stored, device) -> None:
        materialize(self, stored, device)
        models.append(self.model)
        blocks = find_blocks(self.model)
        real = [i for i, block in enumerate(blocks.modules) if any(p.device.type != "meta" for p in block.parameters())]
        seen.append((sorted(stored)[0], real, self.model.lm_head.weight.device.type != "meta"))

    monkeypatch.setattr(Skeleton, "materialize", watched)
    trims: list[list[int]] = []  # blocks holding weights whenever the heap is trimmed

    def trim() -> bool:
        blocks = find_blocks(models[-1])
        trims.append([i for i, block in enumerate(blocks.modules) if any(p.device.type != "meta" for p in block.parameters())])
        return release_free_memory()

    monkeypatch.setattr(streaming_host, "release_free_memory", trim)
    skeleton = build_skeleton(LazyCheckpoint(source), torch.float32)
    assert all(p.device.type == "meta" for p in skeleton.model.parameters())  # no weight allocated
    prune_streaming(source, tmp_path / "out", build_method("sparsegpt", sparsity=0.5), calib, QUIET)
    capture, *steps = seen
    assert capture[1] == [0] and not capture[2]  # embeddings and block 0 (its output type), never the head
    held = [step[1] for step in steps]  # a block's entry, then its parked layers read back one by one
    assert all(len(blocks) == 1 for blocks in held)
    assert [b for i, b in enumerate(held) if i == 0 or b != held[i - 1]] == [[0], [1], [2]]
    assert not any(step[2] for step in steps)
    assert all(p.device.type == "meta" for p in models[-1].parameters())  # everything released at the end
    # Free heap pages go back to the system once a block's statistics are taken (its linear layers
    # parked, its norms still there) and once the block is written and released; never per layer.
    assert trims == [[0], [], [1], [], [2], []]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_heap_memory_is_returned_on_linux():
    assert release_free_memory() is True and release_free_memory() is True


def test_collections_inside_walk_only_the_objects_made_there():
    import gc

    from prunellm.streaming.heap import young_objects_only

    class Node:
        pass

    enabled = gc.isenabled()
    gc.disable()  # no automatic collection between the steps below
    try:
        _check_young_objects_only(Node, young_objects_only)
    finally:
        if enabled:
            gc.enable()


def _check_young_objects_only(Node, young_objects_only):
    import gc
    import weakref

    older = Node()
    older.self = older  # garbage from before: frozen, collected after
    seen_older = weakref.ref(older)
    del older
    with young_objects_only():
        assert gc.get_freeze_count() > 0
        # Not compared by count: a frozen object another thread frees meanwhile leaves the frozen set.
        between = Node()  # made inside the outer freeze: young for the nested one too
        between.self = between
        seen_between = weakref.ref(between)
        del between
        with young_objects_only():  # nested: it freezes nothing more ...
            gc.collect()
            assert seen_between() is None
        assert gc.get_freeze_count() > 0  # ... and leaves the outer freeze standing
        cycle = Node()
        cycle.self = cycle
        seen = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert seen() is None  # what the run made is collected
        assert seen_older() is not None  # what was there before waits
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert seen_older() is None


def test_streamed_cli_run_with_a_block_range(root, calib, tmp_path, capsys):
    source = model_dir(root, "phi")
    out = tmp_path / "out"
    args = ["prune", str(source), "--stream", "--calib", calib.source, "--num-samples", "4", "--seqlen", "32",
            "--method", "wanda", "--nm", "2:4", "--first-block", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "saved to" in capsys.readouterr().out
    before, after = weights(source), weights(out)
    assert before.keys() == after.keys()
    for name, tensor in after.items():
        if name.startswith("model.layers.1.") and name.endswith(("proj.weight", "dense.weight", "fc1.weight",
                                                                 "fc2.weight")):
            assert torch.all((tensor == 0).reshape(tensor.shape[0], -1, 4).sum(-1) >= 2), name
        else:  # block 0, embeddings, norms: copied as they were
            assert torch.equal(tensor, before[name]), name
    report = report_without_timings(out)
    assert {layer["block"] for layer in report["layers"]} == {1}


BAD = {
    "no model directory": (["--stream", "--out", "OUT"], "give MODEL and --out"),
    "no output": (["MODEL", "--stream"], "give MODEL and --out"),
    "evaluation": (["MODEL", "--stream", "--out", "OUT", "--eval", "CALIB"], "cannot evaluate it"),
    "owl": (["MODEL", "--stream", "--out", "OUT", "--allocation", "owl"], "prune without --stream"),
    "not safetensors": (["BIN", "--stream", "--out", "OUT"], "needs safetensors weights"),
    # Checked before the work directory exists: a refused range leaves nothing to block the corrected command.
    "last block past the model": (["MODEL", "--stream", "--out", "OUT", "--last-block", "9"],
                                  "block range 0..9 is outside the model's 3 blocks"),
    "negative last block": (["MODEL", "--stream", "--out", "OUT", "--last-block", "-1"],
                            "block range 0..-1 is outside the model's 3 blocks"),
    "first block past the model": (["MODEL", "--stream", "--out", "OUT", "--first-block", "5"],
                                   "block range 5..2 is outside the model's 3 blocks"),
    "batch size of zero": (["MODEL", "--stream", "--out", "OUT", "--batch-size", "0"], "batch_size must be positive"),
    "unknown device": (["MODEL", "--stream", "--out", "OUT", "--device", "gpu"], "unknown device 'gpu'"),
    "quantized weights saved narrower": (["MODEL", "--stream", "--out", "OUT", "--bits", "4", "--save-dtype",
                                          "float16"], "--save-dtype float16 would move the quantized weights off"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_streaming_input_is_refused_with_one_line_and_nothing_written(case, llama_dir, calib, tmp_path, capsys):
    bin_dir = tmp_path / "bin-model"  # a config without safetensors (an old pytorch_model.bin checkpoint)
    tiny_config("llama").save_pretrained(bin_dir)
    extra, message = BAD[case]
    swap = {"MODEL": str(llama_dir), "OUT": str(tmp_path / "out"), "CALIB": calib.source, "BIN": str(bin_dir)}
    args = ["prune", *[swap.get(a, a) for a in extra], "--calib", calib.source, "--num-samples", "4",
            "--seqlen", "32", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_nan_weight_is_refused_naming_it(calib, tmp_path):
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(tmp_path / "nan")
    word_tokenizer(WORDS).save_pretrained(tmp_path / "nan")
    with pytest.raises(PrunellmError, match="model.layers.1.mlp.up_proj.weight"):
        prune_streaming(tmp_path / "nan", tmp_path / "out", build_method("sparsegpt", sparsity=0.5), calib, QUIET)
    assert not (tmp_path / "out").exists()


def test_checkpoints_that_need_merging_are_refused(tmp_path):
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "moe")
    with pytest.raises(PrunellmError, match="streaming cannot read them tensor by tensor"):
        build_skeleton(LazyCheckpoint(tmp_path / "moe"), torch.float32)


def test_gguf_grids_are_kept_as_in_memory(llama_dir, calib, tmp_path):
    # A prune onto a GGUF grid keeps the grids beside the weights, for a lossless export later.
    from prunellm.io.grids import load_gguf_blocks

    method = build_method("gptq", gguf="q4_0")
    model, tokenizer = load_model(llama_dir)
    result = prune(model, tokenizer, method, calib, QUIET)
    run = prune_streaming(llama_dir, tmp_path / "stream", method, calib, QUIET)
    grids = load_gguf_blocks(run.out)
    assert grids.keys() == result.gguf_blocks.keys() and len(grids) == 21
    for name, grid in grids.items():
        assert grid.type == "q4_0" and torch.equal(grid.params, result.gguf_blocks[name].params), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_auto_dtype_is_the_same_streamed_and_in_memory(root, calib, tmp_path):
    # --dtype auto decides by where the model computes in both paths (in memory it is loaded on
    # CPU, blocks visit the GPU): a bfloat16 checkpoint stays bfloat16, and the outputs agree.
    source = root / "llama-bf16"
    tiny_model("llama").to(torch.bfloat16).save_pretrained(source)
    word_tokenizer(WORDS).save_pretrained(source)
    common = ["--calib", calib.source, "--num-samples", "4", "--seqlen", "32", "--method", "sparsegpt",
              "--sparsity", "0.5", "--device", "cuda", "--quiet"]
    assert main(["prune", str(source), *common, "--out", str(tmp_path / "memory")]) == 0
    assert main(["prune", str(source), "--stream", *common, "--out", str(tmp_path / "stream")]) == 0
    memory, stream = weights(tmp_path / "memory"), weights(tmp_path / "stream")
    assert memory.keys() == stream.keys()
    for name, tensor in memory.items():
        assert tensor.dtype == stream[name].dtype == torch.bfloat16, name
        assert torch.equal(tensor, stream[name]), name


@pytest.mark.parametrize("arch, extra, saved", [("llama", [], torch.bfloat16), ("gpt2", [], torch.bfloat16),
                                                 ("llama", ["--bits", "4", "--format", "hf"], torch.float32),
                                                 ("llama", ["--save-dtype", "float32"], torch.float32)],
                         ids=["sparse", "sparse-tied-head", "quantized", "asked"])
def test_on_cpu_a_bfloat16_checkpoint_is_saved_in_its_dtype_unless_quantized(arch, extra, saved, root, calib,
                                                                             tmp_path):
    # On CPU both paths compute in float32; --save-dtype auto writes a sparse result back in the
    # source's dtype (half the size) and keeps a quantized one in float32, where its grid is exact.
    source = root / f"{arch}-bf16-cpu"
    if not source.exists():
        tiny_model(arch).to(torch.bfloat16).save_pretrained(source)
        word_tokenizer(WORDS).save_pretrained(source)
    common = ["--calib", calib.source, "--num-samples", "4", "--seqlen", "32", "--method", "sparsegpt",
              "--sparsity", "0.5", "--refine", "none", "--device", "cpu", "--quiet", *extra]
    assert main(["prune", str(source), *common, "--out", str(tmp_path / "memory")]) == 0
    assert main(["prune", str(source), "--stream", *common, "--out", str(tmp_path / "stream")]) == 0
    memory, stream = weights(tmp_path / "memory"), weights(tmp_path / "stream")
    assert memory.keys() == stream.keys()
    for name, tensor in memory.items():
        assert tensor.dtype == stream[name].dtype == saved, name
        assert torch.equal(tensor, stream[name]), name
    for out in ("memory", "stream"):
        assert json.loads((tmp_path / out / "config.json").read_text())["dtype"] == str(saved).split(".")[1]
        assert json.loads((tmp_path / out / "report.json").read_text())["saved_dtype"] == str(saved).split(".")[1]
    embedding = next(name for name in memory if "wte" in name or "embed_tokens" in name)
    assert torch.equal(memory[embedding].to(torch.bfloat16), weights(source)[embedding])  # untouched, exactly


def watch_streamed_model(monkeypatch) -> list:
    """A list that receives the streamed model at every read from the checkpoint (the last entry is
    the one in use)."""
    models = []
    materialize = Skeleton.materialize

    def watched(self: Skeleton, stored, device) -> None:
        materialize(self, stored, device)
        models.append(self.model)

    monkeypatch.setattr(Skeleton, "materialize", watched)
    return models


def loaded_block_layers(model: torch.nn.Module) -> list[str]:
    """The decoder blocks' linear layers that hold their weights now (the others are on meta)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in name and module.weight.device.type != "meta"]


def test_the_widest_layer_is_solved_with_the_rest_of_its_block_parked(llama_dir, calib, tmp_path, monkeypatch):
    """During each solve, the block's layers not yet solved, the one being solved included (the solver
    works on a copy), are on the meta device, back in the checkpoint; the widest layer goes first, so
    its solve, the block's largest, holds no weight of the block at all."""
    models = watch_streamed_model(monkeypatch)
    method = build_method("sparsegpt", sparsity=0.5)
    solves: list[tuple[int, list[str]]] = []  # (columns, linear layers holding weights) at each solve
    compress = type(method).compress

    def recorded(self, weight, hessian, **options):
        solves.append((weight.shape[1], loaded_block_layers(models[-1])))
        return compress(self, weight, hessian, **options)

    monkeypatch.setattr(type(method), "compress", recorded)
    prune_streaming(llama_dir, tmp_path / "out", method, calib, QUIET)
    per_block = 7  # q, k, v, o, gate, up, down
    assert len(solves) == 3 * per_block
    widest = max(columns for columns, _ in solves)
    for block in range(3):
        (first_columns, first_held), *rest = solves[block * per_block:(block + 1) * per_block]
        assert first_columns == widest and first_held == []
        for k, (columns, held) in enumerate(rest, start=1):  # the k layers solved before it, nothing else
            assert columns <= widest
            assert len(held) == k and all(name.startswith(f"model.layers.{block}.") for name in held)
        assert f"model.layers.{block}.mlp.down_proj" in rest[0][1]


def test_the_statistics_pass_holds_one_linear_layer_at_a_time(llama_dir, calib, tmp_path, monkeypatch):
    """Through each block's statistics pass, a linear layer has its weight only for its own call;
    down_proj, whose input is the pass's last statistic, is never read (the pass stops at it).
    The same holds while the blocks' calls are captured (block 0 runs once on one token)."""
    from contextlib import contextmanager

    from prunellm.walker.statistics import StatisticsCollector

    models = watch_streamed_model(monkeypatch)
    in_pass = []
    run = StatisticsCollector.run

    def pass_run(self, forward) -> None:
        in_pass.append(True)
        try:
            run(self, forward)
        finally:
            in_pass.pop()

    monkeypatch.setattr(StatisticsCollector, "run", pass_run)
    capturing = streaming_host.StreamingHost.capturing

    @contextmanager
    def flagged(self):
        with capturing(self):
            in_pass.append(True)
            try:
                yield
            finally:
                in_pass.pop()

    monkeypatch.setattr(streaming_host.StreamingHost, "capturing", flagged)
    calls: list[tuple[str, list[str]]] = []  # (layer called, block layers holding weights then)
    linear_forward = torch.nn.Linear.forward

    def recorded(self, x):
        if in_pass:
            name = next(name for name, module in models[-1].named_modules() if module is self)
            calls.append((name, loaded_block_layers(models[-1])))
        return linear_forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", recorded)
    prune_streaming(llama_dir, tmp_path / "out", build_method("sparsegpt", sparsity=0.5), calib, QUIET)
    capture = [name for name, _ in calls if name.endswith("down_proj")]  # only the capture runs a whole block
    assert set(capture) == {"model.layers.0.mlp.down_proj"}
    assert {name.rsplit(".", 1)[-1] for name, _ in calls} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}
    assert {name.split(".")[2] for name, _ in calls} == {"0", "1", "2"}
    for name, held in calls:
        assert held == [name]


def test_each_hessian_is_lent_to_its_last_solve_and_the_errors_are_as_in_memory(llama_dir, calib, tmp_path,
                                                                               monkeypatch):
    """The last layer solved on a Hessian may overwrite it (its inverse factor in the same storage)
    while a copy waits on disk; the copy refills it for the layer's error, which comes out as in memory."""
    method = build_method("sparsegpt", sparsity=0.5)
    model, tokenizer = load_model(llama_dir)
    in_memory = prune(model, tokenizer, method, calib, QUIET)

    lent: dict[str, bool] = {}
    compress = type(method).compress

    def recorded(self, weight, hessian, **options):
        lent[f"{weight.shape}#{len(lent)}"] = options.get("restore_hessian") is not None
        return compress(self, weight, hessian, **options)

    monkeypatch.setattr(type(method), "compress", recorded)
    run = prune_streaming(llama_dir, tmp_path / "out", method, calib, QUIET)
    # Widest first, then the model's order: down; q, k, v (one Hessian); o; gate, up (one Hessian)
    assert list(lent.values()) == 3 * [True, False, False, True, True, False, True]
    assert [(r.name, r.relative_error) for r in run.result.layers] == \
        [(r.name, r.relative_error) for r in in_memory.layers]
    assert all(r.relative_error > 0 for r in run.result.layers)
    assert not list((tmp_path).glob(".*"))  # no scratch file left behind


@pytest.mark.parametrize("method", [dict(name="sparsegpt", sparsity=0.5, refine="lsq"), dict(name="gptq", bits=4)],
                         ids=["refined", "gptq"])
def test_a_method_that_needs_its_hessian_again_is_lent_none(method, llama_dir, calib, tmp_path, monkeypatch):
    """A refinement solves on the Hessian after the prune, and GPTQ does not take a lent one: no
    copy is written for them."""
    backups = []
    backed_up = streaming_host.StreamingHost.backed_up

    def counted(self, hessian):
        backups.append(hessian.shape)
        return backed_up(self, hessian)

    monkeypatch.setattr(streaming_host.StreamingHost, "backed_up", counted)
    options = dict(method)
    prune_streaming(llama_dir, tmp_path / "out", build_method(options.pop("name"), **options), calib, QUIET)
    assert backups == []
    prune_streaming(llama_dir, tmp_path / "plain", build_method("sparsegpt", sparsity=0.5), calib, QUIET)
    assert len(backups) == 3 * 4  # down, v (q/k/v's last), o, up (gate/up's last) in each block


def test_a_layer_never_called_is_written_unchanged(llama_dir, calib, tmp_path, monkeypatch, caplog):
    """A layer the calibration pass never calls is warned about and left as it is: it is not parked
    with the others, and its checkpoint values reach the output."""
    from prunellm.walker import compress as walker_compress

    discover = walker_compress.discover_input_groups

    def without_o_proj(block, layers, run):
        groups = discover(block, layers, run)
        for group in groups:
            group.names = [name for name in group.names if not name.endswith("o_proj")]
        return [group for group in groups if group.names]

    monkeypatch.setattr(walker_compress, "discover_input_groups", without_o_proj)
    with caplog.at_level("WARNING", logger="prunellm.walker.compress"):
        run = prune_streaming(llama_dir, tmp_path / "out", build_method("sparsegpt", sparsity=0.5), calib, QUIET)
    assert sum("was never called" in r.getMessage() for r in caplog.records) == 3
    source, out = weights(llama_dir), weights(run.out)
    for name, tensor in out.items():
        if "o_proj" in name:
            assert torch.equal(tensor, source[name].to(tensor.dtype)), name
        elif "q_proj" in name:
            assert not torch.equal(tensor, source[name].to(tensor.dtype)), name

"""The CPU runtime on the native kernels: `prunellm.load(DIR, "cpu")` repacks every compressed
layer for them; decode steps (up to the layers' token limits a call) equal the expanded model's
up to float32 rounding, prefill is bit for bit the expanded model's, greedy generation gives the
same tokens; without the library, today's expansion at load and one warning; a quantized head."""

from __future__ import annotations

import copy
import gc
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

import prunellm
from prunellm.runtime.decode_loop import DecodeLoop
from prunellm.errors import PrunellmError
from prunellm.formats.compressed.checkpoint import TENSORS_FILE, read_compressed, save_compressed
from prunellm.formats.compressed.layer import compress_weight, decompress_weight
from prunellm.methods import build_method
from prunellm.runtime import cpu_kernels
from prunellm.runtime.bench_infer import cache_argument, layer_paths
from prunellm.runtime.head import group_size_for, quantize_rows
from prunellm.runtime.linear import CompressedLinear
from prunellm.runtime.token_limits import MOST_TOKENS
from prunellm.walker import WalkConfig, compress_model
from tests.model_dirs import WORDS
from tests.tiny_models import tiny_config, tiny_model, tokens, word_tokenizer

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason="native CPU kernels not built")

SETTINGS = {  # name: method options, n:m, expected layout
    "50%": ({"sparsity": 0.5}, None, "bitmask"),
    "2:4": ({"nm": "2:4"}, (2, 4), "nm"),
    "2:4+4bit": ({"nm": "2:4", "bits": 4, "group_size": 16}, (2, 4), "nm"),
    "50%+4bit": ({"sparsity": 0.5, "bits": 4, "group_size": 16}, None, "bitmask"),
}


def _save(model: nn.Module, options: dict, nm: tuple[int, int] | None, out: Path) -> Path:
    result = compress_model(model, build_method("sparsegpt", **options), tokens(),
                            WalkConfig(progress=False, layer_errors=False))
    path, _ = save_compressed(model, word_tokenizer(WORDS), out, [r.name for r in result.layers],
                              grids=result.quant_grids, nm=nm, dtype="float32")
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama compressed at each setting, saved in float32."""
    root = tmp_path_factory.mktemp("cpu-runtime")
    return {name: _save(tiny_model("llama"), options, nm, root / name.replace(":", "-").replace("%", "pct"))
            for name, (options, nm, _) in SETTINGS.items()}


def _compressed_layers(model: nn.Module, directory: Path) -> list[nn.Module]:
    return [model.get_submodule(name) for name in read_compressed(directory).layers]


def _step(model: nn.Module, ids: torch.Tensor, cache=None):
    """Logits of `ids` after what `cache` holds (None: a fresh cache), and the cache."""
    from transformers import DynamicCache

    cache = DynamicCache() if cache is None else cache
    with torch.no_grad():
        out = model(ids, use_cache=True, **{cache_argument(model): cache})
    return out.logits, cache


@needs_kernels
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_cpu_load_decodes_on_the_native_kernels(dirs, setting: str) -> None:
    directory = dirs[setting]
    model = prunellm.load(directory, "cpu")
    expanded = prunellm.load(directory, "cpu", keep_compressed=False)
    layers = _compressed_layers(model, directory)
    assert layers and all(isinstance(m, CompressedLinear) and m.native is not None for m in layers)
    assert SETTINGS[setting][2] in {m.spec.layout for m in layers}  # (small layers may take "quant")
    assert not any(list(m.buffers()) for m in layers)  # the file's parts dropped
    paths = layer_paths(model)
    assert all(key.endswith(": cpu kernel") for key in paths) and sum(paths.values()) == len(layers)
    assert not any(isinstance(m, CompressedLinear) for m in expanded.modules())

    prompt = tokens(1, MOST_TOKENS + 8, seed=7)  # a prefill: expanded per call, bit for bit
    a, cache_a = _step(model, prompt)
    b, cache_b = _step(expanded, prompt)
    assert torch.equal(a, b)
    limit = min(m.cpu_kernel_max_tokens(torch.float32) for m in layers)
    for length in (1, limit):  # decode steps: the kernels, equal up to float32 rounding
        ids = tokens(1, length, seed=length)
        a, cache_a = _step(model, ids, cache_a)
        b, cache_b = _step(expanded, ids, cache_b)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    greedy = [m.generate(prompt[:, :6], max_new_tokens=20, do_sample=False, min_new_tokens=20)[0, 6:].tolist()
              for m in (model, expanded)]
    assert greedy[0] == greedy[1] and len(greedy[0]) == 20


@needs_kernels
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_the_file_is_let_go_after_load(dirs) -> None:
    """Only the repacked buffers stay: the file's memory map goes once the layers are in place
    (one tensor of the file kept alive would keep all of it mapped and, once read, resident)."""
    model = prunellm.load(dirs["2:4+4bit"], "cpu")
    gc.collect()
    assert str(dirs["2:4+4bit"] / TENSORS_FILE) not in Path("/proc/self/maps").read_text()
    assert model.get_input_embeddings().weight.abs().sum() > 0


@needs_kernels
def test_a_repacked_layer_is_the_dense_layer() -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 96)
    weight[torch.rand(40, 96) < 0.6] = 0
    bias = torch.randn(40)
    layer = CompressedLinear(compress_weight(weight.to(torch.bfloat16)), bias.to(torch.bfloat16))
    assert set(layer.state_dict()) == {"mask", "row_offsets", "values", "bias"}
    assert layer.prepare_cpu() and layer.native is not None and layer.prepare_cpu()
    assert set(layer.state_dict()) == {"bias"} and "cpu kernel" in repr(layer)  # not a checkpoint any more
    with pytest.raises(RuntimeError, match="dense_weight"):
        layer.packed
    dense, bias = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
    assert torch.equal(layer.dense_weight(), dense)
    x = torch.randn(2, 1, 96).to(torch.bfloat16)  # 2 tokens: the kernel, the bias added after
    torch.testing.assert_close(layer(x).float(), F.linear(x.float(), dense.float(), bias.float()), rtol=1e-2,
                               atol=2e-2)
    x = torch.randn(1, MOST_TOKENS + 1, 96).to(torch.bfloat16)  # a prefill: the dense layer exactly
    assert torch.equal(layer(x), F.linear(x, dense, bias))
    unbiased = CompressedLinear(compress_weight(dense))
    assert unbiased.prepare_cpu()
    for dtype in (torch.float32, torch.float16):  # a float16 model's activations go through float32
        x = torch.randn(2, 1, 96).to(dtype)
        y = unbiased(x)
        assert y.dtype == dtype and y.shape == (2, 1, 40)
        torch.testing.assert_close(y.float(), F.linear(x.float(), dense.float()), rtol=1e-2, atol=1e-2)
        x = torch.randn(1, MOST_TOKENS + 1, 96).to(dtype)
        assert torch.equal(unbiased(x), F.linear(x, dense.to(dtype)))


def test_without_the_library_load_expands_and_warns_once(dirs, monkeypatch, caplog) -> None:
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    monkeypatch.setattr(cpu_kernels, "_warned", False)
    directory = dirs["2:4+4bit"]
    with caplog.at_level(logging.WARNING):
        model = prunellm.load(directory, "cpu")
        kept = prunellm.load(directory, "cpu", keep_compressed=True)
    warnings = [r for r in caplog.records if "native CPU kernels unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "expanded at load" in warnings[0].getMessage()
    assert all(type(m) is nn.Linear for m in _compressed_layers(model, directory))
    assert all(isinstance(m, CompressedLinear) and m.native is None for m in _compressed_layers(kept, directory))
    ids = tokens(1, 12, seed=3)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, kept(ids).logits)
    with pytest.raises(PrunellmError, match="native CPU kernels"):
        prunellm.load(directory, "cpu", head_bits=8)


@needs_kernels
def test_a_truncated_part_is_refused_at_load(dirs, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(dirs["50%+4bit"], broken)
    tensors = load_file(broken / TENSORS_FILE)
    name = "model.layers.1.mlp.up_proj.weight.qvalues"
    tensors[name] = tensors[name][:-3].clone()
    save_file(tensors, str(broken / TENSORS_FILE), metadata={"format": "prunellm-compressed", "version": "1"})
    with pytest.raises(PrunellmError) as refused:
        prunellm.load(broken, "cpu")
    message = str(refused.value)
    assert "\n" not in message and "model.layers.1.mlp.up_proj" in message and "truncated" in message


def _tied_dir(root: Path) -> Path:
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return _save(model, *SETTINGS["2:4+4bit"][:2], root / "tied")


@needs_kernels
def test_head_bits_quantize_the_head_for_the_kernels(dirs, tmp_path: Path) -> None:
    reference = prunellm.load(dirs["2:4"], "cpu")
    prompt = tokens(1, 6, seed=11)
    expected = reference.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    with torch.no_grad():
        logits = reference(prompt).logits
    for bits in (8, 4):
        model = prunellm.load(dirs["2:4"], "cpu", head_bits=bits)
        head = model.get_output_embeddings()
        assert isinstance(head, CompressedLinear) and head.native is not None
        assert head.spec.layout == "quant" and head.spec.bits == bits and head.spec.group_size == 64
        with torch.no_grad():
            quantized = model(prompt).logits
        assert bool(torch.isfinite(quantized).all())
        error = (quantized - logits).abs().max() / logits.abs().max()
        assert error < (0.02 if bits == 8 else 0.2), (bits, float(error))
        if bits == 8:
            greedy = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
            assert torch.equal(greedy, expected)
    tied = _tied_dir(tmp_path)
    model = prunellm.load(tied, "cpu", head_bits=8)
    embeddings = model.get_input_embeddings().weight
    assert isinstance(model.get_output_embeddings(), CompressedLinear) and embeddings.dtype == torch.float32
    assert torch.equal(embeddings, prunellm.load(tied, "cpu").get_input_embeddings().weight)  # untied, unchanged
    assert not model.config.tie_word_embeddings
    with pytest.raises(PrunellmError, match="head_bits"):
        prunellm.load(tied, "cpu", head_bits=3)


def test_head_rows_are_rounded_to_nearest() -> None:
    assert group_size_for(4096) == 128 and group_size_for(576) == 96 and group_size_for(100) is None
    weight = torch.randn(10, 96, generator=torch.Generator().manual_seed(0))
    for bits in (8, 4):
        packed = quantize_rows(weight, bits, 32)
        dense = decompress_weight(packed)
        step = packed.tensors["scales"].repeat_interleave(32, dim=1)  # (R, C) the grid's step
        assert bool(((dense - weight).abs() <= step / 2 + 1e-6).all())


def test_head_rows_quantized_in_bands_give_the_one_band_parts(monkeypatch) -> None:
    """A head is quantized and packed a band of rows at a time (a vocabulary's float copy would
    be gigabytes): bands of 3 rows give the parts of one band, bit for bit, 4-bit codes of an odd
    width included."""
    import prunellm.runtime.head as head

    weight = torch.randn(10, 90, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for bits, group in ((4, None), (8, 30), (4, 18)):
        whole = quantize_rows(weight, bits, group)
        monkeypatch.setattr(head, "ROWS_AT_ONCE", 3)
        banded = quantize_rows(weight, bits, group)
        monkeypatch.undo()
        assert whole.tensors.keys() == banded.tensors.keys()
        assert all(torch.equal(whole.tensors[k], banded.tensors[k]) for k in whole.tensors)


@pytest.mark.slow
@needs_kernels
def test_smollm2_at_50_percent_generates_the_dense_models_tokens(smollm2, tmp_path: Path) -> None:
    """The real SmolLM2 magnitude-pruned to 50% per row (no calibration), saved compressed in
    float32 (bitmask layers): loaded on the kernels, its greedy tokens are the pruned model's
    (which is the expanded model: float32 values are stored exactly). Marked slow: it copies,
    prunes and saves 135M float32 weights, which takes from seconds to minutes depending on
    what else shares the cores."""
    model, tokenizer = smollm2
    pruned = copy.deepcopy(model)
    names = [name for name, m in pruned.named_modules() if isinstance(m, nn.Linear) and ".layers." in name]
    with torch.no_grad():
        for name in names:
            weight = pruned.get_submodule(name).weight  # (out, in)
            drop = weight.abs().argsort(dim=1)[:, : weight.shape[1] // 2]
            weight.scatter_(1, drop, 0.0)
    out, _ = save_compressed(pruned, tokenizer, tmp_path / "smollm2-50", names, dtype="float32")
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    loaded = prunellm.load(out, "cpu")
    pruned.set_attn_implementation(loaded.config._attn_implementation)
    layers = _compressed_layers(loaded, out)
    assert len(layers) == len(names) and all(m.native is not None and m.spec.layout == "bitmask" for m in layers)
    generated = [m.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)[0].tolist()
                 for m in (loaded, pruned)]
    assert generated[0] == generated[1]
    # prunellm's own loop, each block one native call (runtime/decode_block.py): the same tokens
    loop = DecodeLoop(loaded, ids.shape[1] + 16)
    assert loop.blocks is not None
    assert ids[0].tolist() + loop.generate(ids, 16)[0].tolist() == generated[1]


@needs_kernels
def test_generate_takes_head_bits_on_the_command_line(dirs, capsys) -> None:
    from prunellm.cli import main

    capsys.readouterr()
    assert main(["generate", str(dirs["2:4"]), "--prompt", "w1 w2", "--max-new-tokens", "3", "--device", "cpu",
                 "--head-bits", "8"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")
    with pytest.raises(SystemExit):
        main(["generate", str(dirs["2:4"]), "--prompt", "w1", "--head-bits", "5"])

"""The own CPU decode loop (runtime/decode_loop.py): on tiny Llama (grouped-query attention, tied
head) and Qwen2 (q/k/v biases), float32 and bfloat16, dense and compressed as `prunellm.load`
gives them, its logits at every step equal the model's with a DynamicCache up to float rounding,
its greedy and sampled tokens are generate's; models it does not run take Hugging Face's path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache

import prunellm
from prunellm.runtime import cpu_kernels
from prunellm.runtime.bench_infer import _one_run, cache_argument
from prunellm.runtime.decode_loop import DecodeLoop, supports
from prunellm.runtime.dense_decode import DecodeLinear
from prunellm.runtime.generate import _eos_ids, generate_text
from prunellm.runtime.linear import CompressedLinear
from tests.model_dirs import WORDS, save_run
from tests.tiny_models import tiny_config, tiny_model, tokens, word_tokenizer

ARCHS = {"llama": True, "qwen2": False}  # arch: tied head
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# (rtol, atol) between the loop's logits and the model's: the linear layers are the same calls,
# attention and rotary tables differ by rounding (bfloat16: a unit in the last place)
TOLERANCE = {"float32": (1e-4, 1e-5), "bfloat16": (2e-2, 2e-2)}


def _fresh(arch: str) -> nn.Module:
    config = tiny_config(arch)
    config.tie_word_embeddings = ARCHS[arch]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _save(arch: str, dtype: str, kind: str, root: Path) -> Path:
    return save_run(_fresh(arch), DTYPES[dtype], kind, root / f"{arch}-{dtype}-{kind}")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[tuple[str, str, str], Path]:
    root = tmp_path_factory.mktemp("decode-loop")
    return {(arch, dtype, kind): _save(arch, dtype, kind, root)
            for arch in ARCHS for dtype in DTYPES for kind in ("dense", "compressed")}


def _reference_steps(model: nn.Module, ids: torch.Tensor, tokens_in: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's own logits (B, V): after the prompt, then after each of `tokens_in` (B,)."""
    cache = DynamicCache()
    kwargs = {"use_cache": True, cache_argument(model): cache}
    with torch.no_grad():
        out = [model(ids, **kwargs).logits[:, -1]]
        out += [model(token[:, None], **kwargs).logits[:, -1] for token in tokens_in]
    return out


@pytest.mark.parametrize("kind", ["dense", "compressed"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_loop_gives_the_models_logits_and_tokens(dirs, arch: str, dtype: str, kind: str) -> None:
    model = prunellm.load(dirs[arch, dtype, kind], "cpu")
    assert supports(model) and model.dtype == DTYPES[dtype]
    linears = [m for m in model.modules() if isinstance(m, (CompressedLinear, DecodeLinear))]
    if cpu_kernels.available() and (kind == "compressed" or dtype == "bfloat16"):
        assert linears  # the layers the runtime made, not plain nn.Linear only
    if ARCHS[arch] and kind == "dense":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tokens(2, 9, seed=5)  # two rows: the cache and attention are per row
    steps = 12
    loop = DecodeLoop(model, ids.shape[1] + steps, batch_size=2)
    got = [loop.prefill(ids)]
    fed = []
    for _ in range(steps):
        fed.append(got[-1].argmax(dim=-1))
        got.append(loop.step(fed[-1]))
    assert loop.length == ids.shape[1] + steps
    rtol, atol = TOLERANCE[dtype]
    for index, (a, b) in enumerate(zip(got, _reference_steps(model, ids, fed))):
        assert a.shape == b.shape == (2, model.config.vocab_size) and a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, msg=f"step {index}")

    prompt = ids[:1, :6]
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, 6:]
    greedy = DecodeLoop(model, 6 + 16).generate(prompt, 16, eos_token_ids=_eos_ids(model), pad_token_id=0)
    assert greedy[0].tolist() == expected.tolist() and len(expected) > 1


ROPES = {"linear": {"factor": 2.0}, "dynamic": {"factor": 2.0},  # dynamic: tables grow with the length
         "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8},
         "yarn": {"factor": 4.0, "original_max_position_embeddings": 8}}  # yarn scales cos and sin too


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_rope_scaling_comes_from_the_models_rotary_embedding(rope: str) -> None:
    config = tiny_config("llama")
    config.max_position_embeddings = 12  # decoding runs past it: scaling variants take effect
    config.rope_parameters = {"rope_type": rope, "rope_theta": 10000.0, **ROPES[rope]}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.model.rotary_emb.rope_type == rope and supports(model)
    ids, steps = tokens(1, 6, seed=1), 20
    reference = _reference_steps(model, ids, [tokens(1, steps, seed=2)[0, i:i + 1] for i in range(steps)])
    loop = DecodeLoop(model, ids.shape[1] + steps)
    got = [loop.prefill(ids)] + [loop.step(tokens(1, steps, seed=2)[0, i:i + 1]) for i in range(steps)]
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sampling_and_end_tokens_follow_generate(dirs) -> None:
    model = prunellm.load(dirs["llama", "float32", "compressed"], "cpu")
    prompt = tokens(1, 5, seed=2)
    torch.manual_seed(3)
    expected = model.generate(prompt, max_new_tokens=20, do_sample=True, temperature=1.3, top_k=None, top_p=None,
                              min_new_tokens=20)[0, 5:]
    torch.manual_seed(3)
    sampled = DecodeLoop(model, 25).generate(prompt, 20, temperature=1.3)[0]
    assert sampled.tolist() == expected.tolist() and len(set(sampled.tolist())) > 1
    # an end token stops both where it first comes, and it is kept
    end = int(sampled[7])
    torch.manual_seed(3)
    stopped = DecodeLoop(model, 25).generate(prompt, 20, temperature=1.3, eos_token_ids=[end], pad_token_id=0)[0]
    first = sampled.tolist().index(end)
    assert stopped.tolist() == sampled[:first + 1].tolist()


def test_generate_text_uses_the_loop_and_says_the_same(dirs, monkeypatch) -> None:
    directory = dirs["qwen2", "bfloat16", "compressed"]
    model, tokenizer = prunellm.load(directory, "cpu"), word_tokenizer(WORDS)
    texts = {}
    for own in (True, False):
        for temperature in (0.0, 0.9):
            generation = generate_text(model, tokenizer, "w1 w2 w3", max_new_tokens=8, temperature=temperature,
                                       seed=4, own_loop=own)
            assert generation.prompt_tokens == 3 and 1 <= generation.new_tokens <= 8
            texts[own, temperature] = generation.text
    assert texts[True, 0.0] == texts[False, 0.0] and texts[True, 0.9] == texts[False, 0.9]
    calls = []
    monkeypatch.setattr(DecodeLoop, "generate", lambda *args, **kwargs: calls.append(1) or torch.zeros(1, 1).long())
    generate_text(model, tokenizer, "w1", max_new_tokens=2)
    assert calls == [1]  # the loop took it
    model.generation_config.repetition_penalty = 1.2  # a logits processor the loop does not apply
    generate_text(model, tokenizer, "w1", max_new_tokens=2)
    generate_text(model, tokenizer, "w1", max_new_tokens=2, own_loop=False)
    assert calls == [1]


@pytest.mark.parametrize("arch", ["gemma3", "opt", "gpt2"])
def test_other_architectures_fall_back(arch: str) -> None:
    model = tiny_model(arch)
    assert not supports(model)
    with pytest.raises(ValueError, match="does not run"):
        DecodeLoop(model, 16)
    generation = generate_text(model, word_tokenizer(WORDS), "w1 w2", max_new_tokens=3)  # Hugging Face's path
    assert generation.new_tokens == 3
    prefill, decode = _one_run(model, tokens(1, 4), 3)
    assert prefill > 0 and decode > 0


def test_sliding_windows_fall_back() -> None:
    config = tiny_config("qwen2")
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 8, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    assert not supports(AutoModelForCausalLM.from_config(config).eval())
    assert supports(tiny_model("qwen2")) and supports(tiny_model("llama"))


def test_bench_runs_decode_on_the_loop(dirs, monkeypatch) -> None:
    model = prunellm.load(dirs["llama", "bfloat16", "dense"], "cpu")
    steps = []
    step = DecodeLoop.step
    monkeypatch.setattr(DecodeLoop, "step", lambda self, token: steps.append(1) or step(self, token))
    prefill, decode = _one_run(model, tokens(2, 6), 4)
    assert prefill > 0 and decode > 0 and len(steps) == 3
    _one_run(model, tokens(2, 6), 4, own_loop=False)
    assert len(steps) == 3


def _teacher_forced(model: nn.Module, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
    """The model's float32 logits (n, V) after ids (1, T) and after each token of fed (n,) but the last."""
    return torch.cat(_reference_steps(model, ids, list(fed[:-1, None]))).float()


@pytest.mark.slow
def test_smollm2_greedy_tokens_are_generates(smollm2) -> None:
    """The real SmolLM2 as loaded (float32): the loop's greedy tokens are generate's. In bfloat16
    with its layers on the kernels at decode (what `prunellm.load` runs), rounding differs from
    SDPA's: the loop's logits are at least as close to the float32 model's as the model's own
    bfloat16 logits are (a greedy token at a near tie may go either way)."""
    from prunellm.runtime.dense_decode import use_kernels_for_dense

    model, tokenizer = smollm2
    assert supports(model)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    new, end = 40, {"eos_token_ids": _eos_ids(model), "pad_token_id": tokenizer.eos_token_id}
    expected = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=end["pad_token_id"])
    expected = expected[0, ids.shape[1]:]
    got = DecodeLoop(model, ids.shape[1] + new).generate(ids, new, **end)[0]
    assert got.tolist() == expected.tolist() and len(expected) > 8

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert use_kernels_for_dense(bf16) > 0 or not cpu_kernels.available()
    assert supports(bf16)
    reference = _teacher_forced(model, ids, expected)
    theirs = _teacher_forced(bf16, ids, expected) - reference
    loop = DecodeLoop(bf16, ids.shape[1] + new)
    ours = torch.cat([loop.prefill(ids)] + [loop.step(token[None]) for token in expected[:-1]]).float()
    ours = ours - reference
    assert ours.pow(2).mean().sqrt() <= 1.25 * theirs.pow(2).mean().sqrt()
    assert ours.abs().max() <= 1.25 * theirs.abs().max()

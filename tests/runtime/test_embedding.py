"""The input embeddings quantized at load (runtime/embedding.py): a lookup gives the rows of the
format's own expansion bit for bit; a tied head of the same bits lends its codes (the float table
goes); the decode loop runs on it and gives the model's own logits; bad requests are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunellm
from prunellm.errors import PrunellmError
from prunellm.formats.compressed.layer import decompress_weight
from prunellm.runtime import cpu_kernels
from prunellm.runtime.decode_loop import DecodeLoop, supports
from prunellm.runtime.embedding import QuantizedEmbedding, QuantizedTable, check_embed_bits
from prunellm.runtime.head import quantize_rows
from prunellm.runtime.linear import CompressedLinear
from tests.model_dirs import save_run
from tests.tiny_models import VOCAB, tiny_config, tokens

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason="native CPU kernels not built")


def _table(weight: torch.Tensor, bits: int, group: int | None) -> QuantizedTable:
    packed = quantize_rows(weight, bits, group)
    return QuantizedTable(packed.tensors["qweight"], packed.tensors["scales"],
                          packed.tensors["zeros"], bits, weight.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("bits, group", [(8, 32), (4, 32), (4, None), (8, 18)])
def test_a_lookup_gives_the_formats_rows_bit_for_bit(dtype, bits, group) -> None:
    weight = torch.randn(50, 90 if group == 18 else 96, generator=torch.Generator().manual_seed(0)).to(dtype)
    table = _table(weight, bits, group)
    expanded = decompress_weight(quantize_rows(weight, bits, group))  # (V, C): the format's expansion
    ids = torch.tensor([[3, 0, 49, 3], [17, 17, 8, 1]])
    rows = QuantizedEmbedding(table)(ids)
    assert rows.shape == (2, 4, weight.shape[1]) and rows.dtype == dtype
    assert torch.equal(rows, expanded[ids])
    with pytest.raises(IndexError, match="out of range"):
        QuantizedEmbedding(table)(torch.tensor([50]))


def _tied_model_dir(root: Path, dtype: torch.dtype) -> Path:
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    return save_run(model, dtype, "compressed", root / f"tied-{dtype}", method="magnitude")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_tied_head_of_the_same_bits_lends_its_codes_and_the_float_table_goes(tmp_path, dtype) -> None:
    directory = _tied_model_dir(tmp_path, dtype)
    model = prunellm.load(directory, "cpu", head_bits=4, embed_bits=4)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert isinstance(head, CompressedLinear) and isinstance(embedding, QuantizedEmbedding)
    assert embedding.table.codes.data_ptr() == head.native.layout.values.data_ptr()  # one table of codes
    assert not model.config.tie_word_embeddings
    # no (V, C) float table left anywhere in the model
    assert not [name for name, p in model.named_parameters() if p.shape[0] == VOCAB]
    ids = torch.arange(VOCAB)
    assert torch.equal(embedding(ids), head.dense_weight())  # each lookup: the head's expanded row

    # The decode loop runs on the quantized lookups and gives the model's own logits.
    assert supports(model)
    prompt = tokens(1, 7, seed=2)
    loop = DecodeLoop(model, 16)
    got = loop.prefill(prompt)
    with torch.no_grad():
        expected = model(prompt).logits[:, -1]
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-5 if dtype == torch.float32 else 2e-2,
                               atol=1e-5 if dtype == torch.float32 else 2e-2)

    # Other bits than the head's, or a float head: the embeddings keep a table of their own.
    own = prunellm.load(directory, "cpu", head_bits=8, embed_bits=4).get_input_embeddings()
    assert own.table.codes.data_ptr() != head.native.layout.values.data_ptr()
    float_head = prunellm.load(directory, "cpu", embed_bits=8)
    assert isinstance(float_head.get_output_embeddings(), torch.nn.Linear)  # keeps the float table
    assert isinstance(float_head.get_input_embeddings(), QuantizedEmbedding)
    reference = prunellm.load(directory, "cpu")
    with torch.no_grad():
        close = float_head(prompt).logits
        exact = reference(prompt).logits
    assert float((close - exact).abs().max() / exact.abs().max()) < 0.02  # 8-bit inputs: near the model


@needs_kernels
def test_generate_takes_embed_bits_and_gives_the_loaded_models_tokens(tmp_path, capsys) -> None:
    from prunellm.cli import main

    directory = _tied_model_dir(tmp_path, torch.bfloat16)
    model = prunellm.load(directory, "cpu", head_bits=4, embed_bits=4)
    prompt = tokens(1, 5, seed=4)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # Hugging Face's
    loop = DecodeLoop(model, 16)
    logits = loop.prefill(prompt)
    own = [int(logits.argmax(-1))]
    for _ in range(7):
        own.append(int(loop.step(torch.tensor([own[-1]])).argmax(-1)))
    assert own == expected[0, 5:].tolist()
    capsys.readouterr()
    assert main(["generate", str(directory), "--prompt", "w1 w2", "--max-new-tokens", "3", "--device", "cpu",
                 "--head-bits", "4", "--embed-bits", "4"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")


def test_bad_requests_are_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(PrunellmError, match="embed_bits must be one of 8, 4, got 3"):
        check_embed_bits(3, torch.device("cpu"))
    with pytest.raises(PrunellmError, match="for a CPU; the device is cuda"):
        check_embed_bits(4, torch.device("cuda"))
    model = AutoModelForCausalLM.from_config(tiny_config("gemma3")).eval()
    from prunellm.runtime.embedding import quantize_embeddings

    with pytest.raises(PrunellmError, match="not a plain embedding"):  # Gemma scales its rows
        quantize_embeddings(model, 4)

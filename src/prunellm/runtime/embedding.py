"""The input embeddings quantized for a CPU (`prunellm.load(..., embed_bits=4)`).

A token reads one row of the embedding table, so the table costs memory rather than time: Qwen2.5's
151936 x 1536 in bfloat16 is 445 MiB, a third of its 50% + 4-bit file. Opt-in, at load: the table
is rounded to the same grid as the quantized head (runtime/head.py: asymmetric min-max, a float32
scale and an integer zero point per row and group of 128 columns) and a lookup expands only the
rows it reads, as float32 scale * (code - zero) rounded to the table's dtype: bit for bit the rows
of the format's own expansion. When the head is tied to the embeddings and quantized to the same
bits, the lookup reads the head's codes where the kernels keep them, so the float table goes and
nothing is stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunellm.errors import PrunellmError
from prunellm.formats.compressed.layer import dequantize_rows
from prunellm.formats.compressed.packing import container_bits, unpack_bits
from prunellm.io.dtypes import dtype_name

from .head import HEAD_BITS, group_size_for, quantize_rows

EMBED_BITS = HEAD_BITS


@dataclass(frozen=True)
class QuantizedTable:
    """codes (V, C * bits / 8) uint8, the first column's code in the lowest bits of a byte;
    scales (V, G) float32 and zeros (V, G) uint8; `dtype` the table's own (what a lookup returns)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros))


class QuantizedEmbedding(nn.Module):
    """An embedding lookup over a QuantizedTable: input ids (...) -> (..., C) in the table's dtype."""

    def __init__(self, table: QuantizedTable, padding_idx: int | None = None) -> None:
        super().__init__()
        self.table = table
        self.num_embeddings, width = table.codes.shape
        self.embedding_dim = width * 8 // table.bits
        self.padding_idx = padding_idx
        self.dtype = table.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table, flat = self.table, input_ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token id out of range for an embedding of {self.num_embeddings} rows")
        codes = unpack_bits(table.codes[flat], table.bits, self.embedding_dim)  # (N, C)
        # the format's own expansion of those rows: float32 scale * (code - zero), then the dtype
        values = dequantize_rows(codes, table.scales[flat], table.zeros[flat]).to(table.dtype)  # (N, C)
        return values.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.table.bits}, dtype={self.table.dtype}"


def embedding_dtype(embedding: nn.Module) -> torch.dtype:
    """The dtype an embedding lookup returns: a table's, or a quantized table's own."""
    return embedding.dtype if isinstance(embedding, QuantizedEmbedding) else embedding.weight.dtype


def check_embed_bits(bits: int, device: torch.device) -> None:
    """Refuse a request the runtime cannot honour, before anything is loaded."""
    if bits not in EMBED_BITS:
        raise PrunellmError(f"embed_bits must be one of {', '.join(map(str, EMBED_BITS))}, got {bits}")
    if device.type != "cpu":
        raise PrunellmError(f"embed_bits quantizes the input embeddings for a CPU; the device is {device}")


def quantize_embeddings(model: nn.Module, bits: int, tied_head: nn.Module | None = None) -> QuantizedEmbedding:
    """Replace `model`'s input embeddings by their `bits`-bit quantization. tied_head: the
    quantized head (runtime/head.py) when it was tied to these embeddings: its codes serve the
    lookups when it has the same bits and keeps the file's rows as they are."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not nn.Embedding:  # a subclass may scale its rows (Gemma's): not ours to drop
        raise PrunellmError(f"embed_bits: the input embeddings of {type(model).__name__} are a "
                            f"{type(embedding).__name__}, not a plain embedding")
    if embedding.weight.dim() != 2 or embedding.weight.shape[1] % 2:
        raise PrunellmError(f"embed_bits: an embedding table of shape {tuple(embedding.weight.shape)} has no "
                            "whole bytes of codes per row")
    table = _shared_table(tied_head, bits, embedding.weight.dtype)
    if table is None:
        weight = embedding.weight.detach()
        packed = quantize_rows(weight, bits, group_size_for(weight.shape[1]))
        table = QuantizedTable(packed.tensors["qweight"], packed.tensors["scales"],
                               packed.tensors["zeros"], bits, weight.dtype)
    quantized = QuantizedEmbedding(table, embedding.padding_idx)
    model.set_input_embeddings(quantized)
    return quantized


def _shared_table(head: nn.Module | None, bits: int, dtype: torch.dtype) -> QuantizedTable | None:
    """The tied head's kernel buffers as a table, when they hold exactly what quantize_rows would
    give the embeddings (the same weight, bits and groups) and keep a row's codes as the file
    packs them (a 'quant' layer whose columns are whole 64s: cpu_layout.py's rows as they are)."""
    native = getattr(head, "native", None)
    if native is None or head.spec.layout != "quant" or head.spec.bits != bits:
        return None
    layout = native.layout
    rows, cols = native.shape
    if layout.cols != layout.cols_pad or layout.code_bits != bits or container_bits(bits) != bits \
            or head.spec.dtype != dtype_name(dtype):
        return None
    width = cols * bits // 8
    codes = layout.values[: rows * width].view(rows, width)  # a view: the head's codes, not a copy
    return QuantizedTable(codes, layout.scales.view(rows, -1), layout.zeros.view(rows, -1), bits, dtype)

"""A Hugging Face directory (safetensors, config, tokenizer, report.json): what
`AutoModelForCausalLM.from_pretrained` loads. The grids quantized layers ended on are kept
beside the weights (io/grids.py), so that a later export to another format is lossless."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunellm.io.dtypes import dtype_name, hf_save_dtype, method_quantizes, stored_dtype
from prunellm.io.lazy import INDEX_FILE, SINGLE_FILE
from prunellm.io.save import save_model

from .base import FinishedRun, OutputFormat, OutputSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method


class HFFormat(OutputFormat):
    name = "hf"
    summary = "a Hugging Face directory (safetensors)"
    streams = True  # what a --stream run writes, shard by shard

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        output = super().check(output, method, source, compute_dtype)
        self._dtype(output, method, source, compute_dtype)  # a refused --save-dtype fails now, not after the prune
        return output

    def stored_dtype(self, output: OutputSpec, model: PreTrainedModel, method: Method,
                     source: str | Path | None, compute_dtype: torch.dtype | str) -> torch.dtype | None:
        return self._dtype(output, method, source, compute_dtype)

    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        dtype = run.extra["saved_dtype"]
        run.report["saved_dtype"] = dtype_name(dtype)
        path = save_model(run.model, run.tokenizer, output.path, report=run.report, overwrite=output.overwrite,
                          dtype=dtype, gguf_blocks=run.result.gguf_blocks, quant_grids=run.result.quant_grids)
        return path, f"saved to {path} ({dtype_name(dtype)})"

    def how_to_load(self, path: Path) -> str:
        return f"load: AutoModelForCausalLM.from_pretrained('{path}') (transformers, vLLM); `prunellm eval {path}`"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.json").is_file() and any(
            (path / name).is_file() for name in (SINGLE_FILE, INDEX_FILE))

    def load(self, path: Path, *, dtype: torch.dtype | str = "auto",
             device: torch.device | str = "cpu") -> PreTrainedModel:
        return self.load_with_tokenizer(path, dtype=dtype if isinstance(dtype, str) else dtype_name(dtype),
                                        compute_device=device)[0]

    def load_with_tokenizer(self, source: str | Path | None, *, dtype: str = "auto",
                            compute_device: torch.device | str | None = None) -> tuple[PreTrainedModel, Any]:
        from prunellm.io import load_model

        return load_model(source, dtype=dtype, compute_device=compute_device)

    @staticmethod
    def _dtype(output: OutputSpec, method: Method, source: str | Path | None,
               compute_dtype: torch.dtype | str) -> torch.dtype:
        from prunellm.io import default_model_path

        return hf_save_dtype(output.save_dtype, stored=stored_dtype(source or default_model_path()),
                             compute=compute_dtype, quantizes=method_quantizes(method.describe()))


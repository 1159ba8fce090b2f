"""compressed-tensors "pack-quantized": the packed int4/int8 checkpoint vLLM and transformers
load (export.py writes it through the compressed-tensors package). Quantization only: the
format keeps no sparsity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunellm.errors import PrunellmError

from ..base import FinishedRun, OutputFormat, OutputSpec
from ..compressed.format import check_exportable, refuse_gguf

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunellm.methods import Method
    from prunellm.walker import WalkConfig

DESCRIPTION = "compressed-tensors pack-quantized"


class CompressedTensorsFormat(OutputFormat):
    name = "compressed-tensors"
    summary = "quantization-only results, for vLLM"
    takes_save_dtype = False

    def check(self, output: OutputSpec, method: Method, source: str | Path | None,
              compute_dtype: torch.dtype | str) -> OutputSpec:
        output = super().check(output, method, source, compute_dtype)
        refuse_gguf(method, self.name)
        from .export import check_compressed_tensors_method

        check_compressed_tensors_method(method.describe())
        return output

    def check_model(self, output: OutputSpec, model: PreTrainedModel, method: Method, walk: WalkConfig) -> None:
        """Only nn.Linear layers pack (GPT-2's Conv1D does not): refused before compressing,
        not after (the check at write time would come after the whole prune)."""
        from torch import nn

        from prunellm.walker import target_layers

        for name, module in target_layers(model, walk).items():
            if not isinstance(module, nn.Linear):
                raise PrunellmError(f"layer {name} is a {type(module).__name__}, and compressed-tensors packs "
                                    "nn.Linear layers only: write --format compressed or hf")

    def write(self, output: OutputSpec, run: FinishedRun) -> tuple[Path, str]:
        if run.result.gguf_blocks:
            raise PrunellmError(f"--format {self.name} holds min-max grids, not GGUF ones: use --format gguf")
        from .export import save_compressed_tensors

        path = save_compressed_tensors(run.model, run.tokenizer, run.result.quant_grids, output.path,
                                       report=run.report, overwrite=output.overwrite)
        return path, f"saved to {path}: {DESCRIPTION}"

    def export(self, directory: Path, output: OutputSpec) -> tuple[Path, str]:
        if output.save_dtype != "auto":
            raise PrunellmError(f"--save-dtype only applies with --to compressed, not --to {self.name}")
        check_exportable(directory)
        from .export import export_directory_to_compressed_tensors

        path = export_directory_to_compressed_tensors(directory, output.path, output.overwrite)
        return path, f"saved to {path}: {DESCRIPTION}"

    def how_to_load(self, path: Path) -> str:
        """Symmetric grids run compressed in transformers; asymmetric ones (zero points) only
        through its dequantizing loader with compressed-tensors 0.20 (see export.py)."""
        if symmetric(path):
            transformers = f"AutoModelForCausalLM.from_pretrained('{path}') (runs it packed)"
        else:
            transformers = (f"AutoModelForCausalLM.from_pretrained('{path}', quantization_config="
                            "CompressedTensorsConfig(dequantize=True)) (an asymmetric grid does not run packed in "
                            "transformers; --scheme W4A16, or --bits 4 with no grid flag, writes a symmetric one)")
        return f"load: `vllm serve {path}`; transformers: {transformers}; `prunellm eval {path}`"

    def detect(self, path: Path) -> bool:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"

    def load(self, path: Path, *, dtype: torch.dtype | str = "auto",
             device: torch.device | str = "cpu") -> PreTrainedModel:
        """Through transformers' dequantizing loader: its compressed one cannot build asymmetric
        (zero-point) layers with compressed-tensors 0.20 (see export.py), and evaluation and
        pruning want dense layers anyway."""
        import warnings

        from transformers import AutoModelForCausalLM, CompressedTensorsConfig

        try:
            with warnings.catch_warnings():  # asking for dequantize over the file's own config is the point
                warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
                model = AutoModelForCausalLM.from_pretrained(
                    path, dtype="auto", quantization_config=CompressedTensorsConfig(dequantize=True))
        except (OSError, ValueError, ImportError, RuntimeError) as error:
            text = str(error).strip().splitlines()
            raise PrunellmError(f"cannot load the compressed-tensors model {path}: "
                                f"{text[0] if text else error!r}") from None
        return model if dtype == "auto" else model.to(dtype)


def symmetric(path: Path) -> bool:
    """Whether every weight group of the compressed-tensors directory at `path` is symmetric."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
        groups = config["config_groups"].values()
        return all(bool((group.get("weights") or {}).get("symmetric")) for group in groups)
    except (OSError, ValueError, KeyError, AttributeError):
        return False

"""The grids a prune ended on, kept beside the saved model for a lossless export later.

- `quant_grids.safetensors`: each min-max quantized layer's scale and zero point, (R, G) float32
  each, as `<layer>.scale` and `<layer>.zero`, and the layer -> {bits, sym, group_size} map as
  JSON in its metadata. A compressed or compressed-tensors export reads the integer codes back
  from the saved weights with them.
- `gguf_blocks.safetensors`: one params tensor (R, C / block, n_params) per layer on a GGUF
  grid, named by the layer, and the layer -> type map in its metadata. Weights saved in a
  half-precision dtype are moved back onto exactly the grid at export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prunellm.errors import PrunellmError
from prunellm.solvers.gguf_grids import GGUFBlocks
from prunellm.solvers.quant import QuantGrid

GRIDS_FILE = "quant_grids.safetensors"
BLOCKS_FILE = "gguf_blocks.safetensors"


def save_quant_grids(directory: str | Path, grids: dict[str, QuantGrid]) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for name, grid in grids.items():
        tensors[f"{name}.scale"] = grid.scale.detach().to(torch.float32).contiguous().cpu()
        tensors[f"{name}.zero"] = grid.zero.detach().to(torch.float32).contiguous().cpu()
        metadata[name] = json.dumps({"bits": grid.bits, "sym": grid.sym, "group_size": grid.group_size})
    save_file(tensors, str(Path(directory) / GRIDS_FILE), metadata=metadata)


def load_quant_grids(directory: str | Path) -> dict[str, QuantGrid]:
    """The grids saved in `directory`, or {} when it has none."""
    from safetensors import safe_open

    path = Path(directory) / GRIDS_FILE
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            grids = {}
            for name, spec in (handle.metadata() or {}).items():
                spec = json.loads(spec)
                grids[name] = QuantGrid(int(spec["bits"]), bool(spec["sym"]), spec["group_size"],
                                        handle.get_tensor(f"{name}.scale"), handle.get_tensor(f"{name}.zero"))
            return grids
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise PrunellmError(f"cannot read {path}: {error}") from None


def save_gguf_blocks(directory: str | Path, blocks: dict[str, GGUFBlocks]) -> None:
    from safetensors.torch import save_file

    tensors = {name: b.params.contiguous().cpu() for name, b in blocks.items()}
    save_file(tensors, str(Path(directory) / BLOCKS_FILE), metadata={name: b.type for name, b in blocks.items()})


def load_gguf_blocks(directory: str | Path) -> dict[str, GGUFBlocks]:
    """The grids saved in `directory`, or {} when it has none."""
    from safetensors import safe_open

    path = Path(directory) / BLOCKS_FILE
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            types = handle.metadata() or {}
            return {name: GGUFBlocks(types[name], handle.get_tensor(name)) for name in handle.keys()}
    except (OSError, KeyError, ValueError) as error:
        raise PrunellmError(f"cannot read {path}: {error}") from None

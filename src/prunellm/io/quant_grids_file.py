"""Keep the min-max grids a prune ended on beside the saved model, for lossless packing later.

`quant_grids.safetensors` holds each quantized layer's scale and zero point, (R, G) float32
each, as `<layer>.scale` and `<layer>.zero`, and the layer -> {bits, sym, group_size} map as
JSON in its metadata. A compressed or compressed-tensors export reads the integer codes back
from the saved weights with them (GGUF grids have their own file: gguf_blocks_file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prunellm.errors import PrunellmError
from prunellm.solvers.quant import QuantGrid

GRIDS_FILE = "quant_grids.safetensors"


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

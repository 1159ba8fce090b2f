"""Keep the GGUF grids a prune ended on beside the saved model, for a lossless export later.

`gguf_blocks.safetensors` holds one params tensor (R, C / block, n_params) per layer, named by
the layer, and the layer -> type map in its metadata. Weights saved in a half-precision dtype
are then moved back onto exactly the grid at export.
"""

from __future__ import annotations

from pathlib import Path


from prunellm.errors import PrunellmError
from prunellm.solvers.gguf_grids import GGUFBlocks

BLOCKS_FILE = "gguf_blocks.safetensors"


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

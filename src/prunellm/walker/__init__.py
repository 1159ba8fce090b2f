"""Model-agnostic, block-by-block calibration and compression. Knows no method by name."""

from .allocate import AllocationConfig, collect_input_norms, owl_allocation
from .blockwalk import BlockHost, BlockStep, ResumePoint, walk_blocks
from .capture import BlockCall, capture_block_calls
from .compress import (LayerRecord, WalkConfig, WalkResult, check_walk_range, compress_model, target_layers,
                       with_forward_dtype)
from ..layers import in_features, read_weight, write_weight
from .discovery import Blocks, find_blocks, find_linear_layers

__all__ = ["AllocationConfig", "collect_input_norms", "owl_allocation", "BlockHost", "BlockStep", "ResumePoint",
           "walk_blocks", "BlockCall", "capture_block_calls", "LayerRecord", "WalkConfig", "WalkResult",
           "check_walk_range", "compress_model", "target_layers", "with_forward_dtype", "Blocks", "find_blocks", "find_linear_layers",
           "in_features", "read_weight", "write_weight"]

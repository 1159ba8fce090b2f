"""Pure tensor math of one-shot compression: no modules, no I/O, no printing.

Every solver takes W (out_features, in_features) float32, the input statistics H
(in, in) float32 where it needs them, and a config dataclass, and returns a SolveResult.
"""

from .allocation import outlier_ratio, owl_sparsities
from .gptq import GPTQConfig, gptq
from .hessian import (HessianAccumulator, InverseHessian, damped_inverse, layer_error, relative_layer_error,
                      shrink_to_diagonal)
from .magnitude import MagnitudeConfig, magnitude
from .masks import lowest_fraction_mask, nm_mask
from .quant import QuantGrid, fit_minmax, quantize
from .refine import refine_on_mask
from .result import SolveResult
from .shrink_choice import HeldOut
from .sparsegpt import SparseGPTConfig, sparsegpt
from .wanda import WandaConfig, wanda, wanda_scores

__all__ = [
    "GPTQConfig", "gptq", "HessianAccumulator", "InverseHessian", "damped_inverse", "layer_error",
    "relative_layer_error", "shrink_to_diagonal", "MagnitudeConfig", "magnitude", "lowest_fraction_mask", "nm_mask",
    "QuantGrid", "fit_minmax", "quantize", "SolveResult", "HeldOut", "SparseGPTConfig", "sparsegpt",
    "WandaConfig", "wanda", "wanda_scores", "outlier_ratio", "owl_sparsities", "refine_on_mask",
]

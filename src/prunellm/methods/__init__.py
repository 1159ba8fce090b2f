"""One small class per method, registered by name: `build_method("sparsegpt", sparsity=0.5)`."""

from . import gptq, magnitude, noop, sparsegpt, wanda  # noqa: F401  (registration)
from .base import Method, build_method, method_names

__all__ = ["Method", "build_method", "method_names"]

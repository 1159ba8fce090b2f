"""Compression methods by name: `build_method("sparsegpt", sparsity=0.5)`.

A method is one file here: its prune's options and solve, composed with the shared refinement
and quantization after (method.py); `@register` makes it buildable by name. Every module of the
package is imported below, so a new file needs no list to join.
"""

import importlib
import pkgutil

from .method import Method, MethodConfig, layer_role
from .registry import OptionSpec, build_method, method_names, option_specs, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodConfig", "OptionSpec", "build_method", "layer_role", "method_names", "option_specs",
           "register"]

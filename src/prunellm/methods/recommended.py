"""The recommended defaults: what a run gets for the options the user leaves unset
(`pipeline.prepare` applies them unless `defaults="paper"`, the methods as published).

Refinement and sparsity allocation: each row is the best variant that bench/high_sparsity.py
measured at that setting on the models of bench/README.md's "High sparsity" table, among those
that prune in at most about 3x plain SparseGPT's time on CPU. A sparsity between rows takes the
nearest row's choice. Only SparseGPT without quantization was measured, so only it gets these:
other methods, and quantized runs, keep the plain method (refine "none", uniform allocation).

GPTQ's Hessian shrinkage: α = 0.5 (quantize against (1 - α)·H + α·diag(H)), where the paper has
none (0); see RECOMMENDED_SHRINK.

The quantization grid: a 4- or 8-bit run (GPTQ, or a prune with bits; not a GGUF type) whose
user set none of the grid's options (group_size, sym, act_order) gets the ecosystem's W4A16 or
W8A16 grid (methods/schemes.py): symmetric, groups of 128 inputs, activation order where the
method has it. That is what llm-compressor writes and what vLLM and transformers run packed;
the papers' per-row asymmetric grid is `--defaults paper`. Groups of 128 do not divide every
model's layers (SmolLM2-135M's 576 inputs are 4.5 groups), so once the model is known the group
is the largest of 128, 64 and 32 (the group sizes vLLM's Marlin kernels take) that divides the
inputs of every layer the run quantizes, one size for the whole model so that the checkpoint
has one grid; per row (still symmetric) if none does. Other bit widths keep the papers' grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import option_specs
from .schemes import SCHEMES, with_scheme


@dataclass(frozen=True)
class Recommendation:
    refine: str
    allocation: str
    owl_lambda: float | None
    evidence: str  # the table row that chose it, for the log line


PLAIN = Recommendation("none", "uniform", None, "the method as published")

# (sparsity, choice), from bench/README.md's "High sparsity" table. ALPS with uniform allocation
# wins or comes close on every model measured; OWL stays off because it made one of them worse:
# a default must hold on models nobody measured. `--allocation owl` is one flag away.
UNSTRUCTURED: tuple[tuple[float, Recommendation], ...] = (
    (0.5, Recommendation("alps", "uniform", None, "50%: + ALPS")),
    (0.6, Recommendation("alps", "uniform", None, "60%: + ALPS")),
    (0.7, Recommendation("alps", "uniform", None, "70%: + ALPS")),
    (0.8, Recommendation("alps", "uniform", None, "80%: + ALPS")),
)
# n:m fixes every layer's sparsity: nothing to allocate.
NM = Recommendation("alps", "uniform", None, "n:m: + ALPS")


# GPTQ's Hessian shrinkage toward its diagonal (bench/README.md, "GGUF export against llama.cpp"):
# α = 0.5 beat llama.cpp's importance-matrix Q4_0 on every model there, where the plain Hessian
# lost on SmolLM2; "auto" (chosen per layer on held-out calibration windows) lost there too, as it
# scores on windows of the calibration text itself. Measured for GPTQ alone: a prune with bits
# keeps the published 0 until it is measured too.
SHRINK_METHODS = ("gptq",)
RECOMMENDED_SHRINK = 0.5
SHRINK_NOTE = (f"--hessian-shrink {RECOMMENDED_SHRINK:g} (GPTQ against its Hessian shrunk halfway to the diagonal: "
               "it generalizes to text unlike the calibration text); --hessian-shrink 0 for GPTQ as published")


def recommended(method: str, options: dict[str, Any]) -> Recommendation:
    """The defaults for `method` with the user's `options` (those of build_method)."""
    quantized = options.get("bits", 16) < 16 or options.get("gguf") is not None
    if method != "sparsegpt" or quantized:
        return PLAIN
    if options.get("nm") is not None:
        return NM
    sparsity = float(options.get("sparsity", 0.5))
    return min(UNSTRUCTURED, key=lambda row: abs(row[0] - sparsity))[1]


# The options that make a grid: a user who sets any of them chooses the grid, and gets exactly it.
GRID_OPTIONS = ("group_size", "sym", "act_order")
GRID_SCHEMES = {4: "W4A16", 8: "W8A16"}  # bits -> the preset whose grid a run gets
GROUP_SIZES = (128, 64, 32)  # the presets' group first; smaller ones where it does not divide
PAPER_GRID = "--defaults paper for the paper's per-row asymmetric grid"


def recommended_grid(method: str, options: dict[str, Any]) -> str | None:
    """The scheme (W4A16, W8A16) whose grid a run of `method` with the user's `options` gets;
    None where the user chose the grid (a grid option, a GGUF type) or it quantizes to other
    bits, or not at all."""
    bits = option_specs().get("bits")
    if bits is None or method not in bits.defaults or options.get("gguf") is not None:
        return None
    if any(name in options for name in GRID_OPTIONS):
        return None
    return GRID_SCHEMES.get(options.get("bits", bits.defaults[method]))


def fit_group_size(layer_inputs: Mapping[str, int], preferred: int = GROUP_SIZES[0]) -> tuple[int | None, str | None]:
    """(group size, why it is not `preferred`): the largest of GROUP_SIZES, from `preferred`
    down, that divides every layer's inputs (layer_inputs: name -> in_features); None (per
    row) if none does. The reason is None when `preferred` fits."""
    tried = [size for size in GROUP_SIZES if size <= preferred]
    failed = [size for size in tried if any(columns % size for columns in layer_inputs.values())]
    if not failed:
        return preferred, None
    # The sizes are powers of two: the smallest that failed is the one that rules out the rest.
    name, columns = next((name, columns) for name, columns in layer_inputs.items() if columns % failed[-1])
    if len(failed) == len(tried):
        return None, f"per row: no group of {', '.join(map(str, tried))} divides the {columns} inputs of {name}"
    size = tried[len(failed)]
    return size, f"groups of {size}: {failed[-1]} does not divide the {columns} inputs of {name}"


def _with_grid(method: str, options: dict[str, Any],
               layer_inputs: Mapping[str, int] | None) -> tuple[dict[str, Any], str | None]:
    """`options` with the recommended grid filled in, and the note that says so (None: nothing
    filled). layer_inputs None: the model is not known yet, groups of 128 until it is."""
    scheme = recommended_grid(method, options)
    if scheme is None:
        return options, None
    takes = {name for name, spec in option_specs().items() if method in spec.defaults}
    filled = with_scheme(scheme, options, takes)
    preferred = SCHEMES[scheme]["group_size"]
    flags = ["--sym"] + (["--act-order"] if "act_order" in takes else [])
    if layer_inputs is None:  # groups of 128 until the model says otherwise
        smaller = " or ".join(str(size) for size in GROUP_SIZES if size < preferred)
        flags.append(f"and groups of {preferred} inputs, or {smaller} if {preferred} does not divide the "
                     "model's layers")
        why = None
    else:
        filled["group_size"], why = fit_group_size(layer_inputs, preferred)
        if filled["group_size"] is not None:
            flags.append(f"--group-size {filled['group_size']}")
    grid = f"{scheme}, the grid of llm-compressor and vLLM" + (f"; {why}" if why else "")
    return filled, f"{' '.join(flags)} ({grid})"


def with_recommended(method: str, options: dict[str, Any], allocation: str | None, owl_lambda: float | None, *,
                     can_allocate: bool = True, layer_inputs: Mapping[str, int] | None = None
                     ) -> tuple[dict[str, Any], str, float | None, str | None]:
    """(options, allocation, owl_lambda, note): the user's choices, with the unset ones among
    refine, allocation, OWL's λ and the quantization grid taken from the recommendations; `note`
    says what was filled in (None when nothing was). owl_lambda None leaves OWL's own default.
    can_allocate False (a streamed prune: OWL needs a dense pass over the whole model) keeps
    allocation uniform. layer_inputs: the in_features of every layer the run compresses, by
    name, once the model is known: the recommended grid's group size is fitted to them."""
    choice = recommended(method, options)
    filled = []
    if "refine" not in options and choice.refine != "none":
        options = {**options, "refine": choice.refine}
        filled.append(f"--refine {choice.refine}")
    if allocation is None:
        allocation = choice.allocation if can_allocate else "uniform"
        if allocation != "uniform":
            filled.append(f"--allocation {allocation}")
    if owl_lambda is None and allocation == "owl" and choice.owl_lambda is not None:
        owl_lambda = choice.owl_lambda
        filled.append(f"--owl-lambda {owl_lambda:g}")
    notes = []
    if filled:
        notes.append(f"{' '.join(filled)} ({choice.evidence}, the best of the high-sparsity benchmark); "
                     "--defaults paper for the method as published")
    options, grid = _with_grid(method, options, layer_inputs)
    if grid is not None:
        notes.append(f"{grid}; {PAPER_GRID}")
    if method in SHRINK_METHODS and "hessian_shrink" not in options:
        options = {**options, "hessian_shrink": RECOMMENDED_SHRINK}
        notes.append(SHRINK_NOTE)
    note = f"recommended defaults: {'; '.join(notes)}" if notes else None
    return options, allocation, owl_lambda, note

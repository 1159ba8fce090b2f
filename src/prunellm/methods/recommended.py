"""The recommended defaults: the refinement and sparsity allocation a run gets when the user
sets neither (`pipeline.prepare` applies them unless `defaults="paper"`).

Each row is the best variant that bench/high_sparsity.py measured at that setting on the models
of bench/README.md's "High sparsity" table, among those that prune in at most about 3x plain
SparseGPT's time on CPU. A sparsity between rows takes the nearest row's choice. Only SparseGPT
without quantization was measured, so only it gets these defaults: other methods, and quantized
runs, keep the plain method (refine "none", uniform allocation) unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def recommended(method: str, options: dict[str, Any]) -> Recommendation:
    """The defaults for `method` with the user's `options` (those of build_method)."""
    quantized = options.get("bits", 16) < 16 or options.get("gguf") is not None
    if method != "sparsegpt" or quantized:
        return PLAIN
    if options.get("nm") is not None:
        return NM
    sparsity = float(options.get("sparsity", 0.5))
    return min(UNSTRUCTURED, key=lambda row: abs(row[0] - sparsity))[1]


def with_recommended(method: str, options: dict[str, Any], allocation: str | None, owl_lambda: float | None, *,
                     can_allocate: bool = True) -> tuple[dict[str, Any], str, float | None, str | None]:
    """(options, allocation, owl_lambda, note): the user's choices, with the unset ones among
    refine, allocation and OWL's λ taken from the table; `note` says what was filled in (None
    when nothing was). owl_lambda None leaves OWL's own default. can_allocate False (a
    streamed prune: OWL needs a dense pass over the whole model) keeps allocation uniform."""
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
    if not filled:
        return options, allocation, owl_lambda, None
    note = (f"recommended defaults: {' '.join(filled)} ({choice.evidence}, the best of the high-sparsity "
            "benchmark); --defaults paper for the method as published")
    return options, allocation, owl_lambda, note

import pytest

from prunellm.methods import build_method
from prunellm.methods.recommended import NM, PLAIN, UNSTRUCTURED, recommended, with_recommended
from prunellm.walker import AllocationConfig


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_every_unstructured_sparsity_gets_the_nearest_measured_row(sparsity):
    choice = recommended("sparsegpt", {"sparsity": sparsity})
    nearest = min(UNSTRUCTURED, key=lambda row: abs(row[0] - sparsity))
    assert choice == nearest[1]
    # Whatever the table says must build: a method and an allocation the walker accepts.
    options, allocation, owl_lambda, note = with_recommended("sparsegpt", {"sparsity": sparsity}, None, None)
    build_method("sparsegpt", **options)
    AllocationConfig(allocation, *([] if owl_lambda is None else [owl_lambda]))
    assert note is None or "--defaults paper" in note


def test_nm_is_never_allocated():
    assert recommended("sparsegpt", {"nm": "2:4"}) == NM and NM.allocation == "uniform"


@pytest.mark.parametrize("method, options", [("wanda", {"sparsity": 0.7}), ("magnitude", {"sparsity": 0.7}),
                                             ("gptq", {"bits": 4}), ("sparsegpt", {"sparsity": 0.5, "bits": 4}),
                                             ("sparsegpt", {"sparsity": 0.5, "gguf": "q4_0"})])
def test_unmeasured_methods_and_quantized_runs_stay_plain(method, options):
    assert recommended(method, options) == PLAIN
    assert with_recommended(method, options, None, None) == (options, "uniform", None, None)


def test_the_users_choices_are_kept():
    options, allocation, owl_lambda, note = with_recommended("sparsegpt", {"sparsity": 0.7, "refine": "none"},
                                                             "uniform", None)
    assert options == {"sparsity": 0.7, "refine": "none"} and allocation == "uniform" and owl_lambda is None
    assert note is None
    options, allocation, owl_lambda, _ = with_recommended("sparsegpt", {"sparsity": 0.7}, "owl", 0.2)
    assert allocation == "owl" and owl_lambda == 0.2


def test_a_streamed_prune_is_never_allocated():
    _, allocation, owl_lambda, _ = with_recommended("sparsegpt", {"sparsity": 0.7}, None, None, can_allocate=False)
    assert allocation == "uniform" and owl_lambda is None

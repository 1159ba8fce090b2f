import pytest

from prunellm.methods import build_method
from prunellm.methods.recommended import (NM, PLAIN, RECOMMENDED_SHRINK, SHRINK_NOTE, UNSTRUCTURED, fit_group_size, recommended,
                                          with_recommended)
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
                                             ("gptq", {"bits": 3}), ("sparsegpt", {"sparsity": 0.5, "bits": 3}),
                                             ("sparsegpt", {"sparsity": 0.5, "gguf": "q4_0"}),
                                             ("gptq", {"bits": 4, "group_size": 16})])
def test_unmeasured_methods_and_quantized_runs_stay_plain(method, options):
    assert recommended(method, options) == PLAIN
    shrink = {"hessian_shrink": RECOMMENDED_SHRINK} if method == "gptq" else {}  # GPTQ's one recommendation
    filled, allocation, owl_lambda, note = with_recommended(method, options, None, None)
    assert (filled, allocation, owl_lambda) == ({**options, **shrink}, "uniform", None)
    assert note is None if not shrink else note == f"recommended defaults: {SHRINK_NOTE}"


@pytest.mark.parametrize("method, options, grid", [
    ("gptq", {}, {"bits": 4, "group_size": 128, "sym": True, "act_order": True}),  # GPTQ's bits default to 4
    ("gptq", {"bits": 8}, {"bits": 8, "group_size": 128, "sym": True, "act_order": True}),
    ("wanda", {"sparsity": 0.5, "bits": 4}, {"bits": 4, "group_size": 128, "sym": True, "act_order": True}),
    ("sparsegpt", {"sparsity": 0.5, "bits": 4}, {"bits": 4, "group_size": 128, "sym": True}),  # no act-order there
])
def test_4_and_8_bit_runs_get_the_ecosystems_grid(method, options, grid):
    assert recommended(method, options) == PLAIN  # no refinement or allocation for a quantized run
    filled, allocation, _, note = with_recommended(method, options, None, None)
    shrink = {"hessian_shrink": RECOMMENDED_SHRINK} if method == "gptq" else {}
    assert filled == {**options, **grid, **shrink} and allocation == "uniform"
    assert note.startswith("recommended defaults: --sym") and "--defaults paper" in note
    build_method(method, **filled)


@pytest.mark.parametrize("options", [{"bits": 4, "sym": False}, {"bits": 4, "sym": True}, {"act_order": True},
                                     {"bits": 8, "group_size": 64}, {"gguf": "q4_0"}, {"bits": 2}, {"bits": 16}])
def test_a_grid_the_user_chose_is_kept_whole(options):
    # Any grid option given: the user chose the grid, and the others keep the method's own defaults.
    filled, _, _, note = with_recommended("gptq", options, None, None)
    assert filled == {**options, "hessian_shrink": RECOMMENDED_SHRINK} and note == f"recommended defaults: {SHRINK_NOTE}"


@pytest.mark.parametrize("method, options", [("gptq", {"gguf": "q4_0"}), ("gptq", {"bits": 4})])
def test_gptq_shrinks_its_hessian_unless_told(method, options):
    filled, _, _, note = with_recommended(method, options, None, None)
    assert filled["hessian_shrink"] == RECOMMENDED_SHRINK == 0.5 and "--hessian-shrink 0.5" in note
    assert build_method(method, **filled).held_out_every == 0  # a fixed α: no windows held out
    assert build_method(method, **{**filled, "hessian_shrink": "auto"}).held_out_every > 0
    for chosen in (0.0, 0.5, "auto"):
        filled, _, _, _ = with_recommended(method, {**options, "hessian_shrink": chosen}, None, None)
        assert filled["hessian_shrink"] == chosen
    # A prune with bits keeps the published plain Hessian (only GPTQ alone was measured).
    filled, _, _, _ = with_recommended("sparsegpt", {"sparsity": 0.5, **options}, None, None)
    assert "hessian_shrink" not in filled and build_method("sparsegpt", **filled).held_out_every == 0


@pytest.mark.parametrize("inputs, size", [
    ({"q": 576, "down": 1536}, 64),  # SmolLM2-135M: 576 = 4.5 x 128
    ({"q": 640, "down": 2048}, 128),  # Gemma-3-270M
    ({"q": 896, "down": 4864}, 128),  # Qwen2.5-0.5B
    ({"q": 64, "down": 128}, 64),  # the tests' tiny models
    ({"q": 96, "down": 256}, 32),
    ({"q": 200, "down": 256}, None),  # per row
])
def test_the_group_size_is_the_largest_that_divides_every_layer(inputs, size):
    fitted, why = fit_group_size(inputs)
    assert fitted == size
    assert all(columns % size == 0 for columns in inputs.values()) if size else why.startswith("per row")
    assert (why is None) == (size == 128)
    filled, _, _, note = with_recommended("gptq", {"bits": 4}, None, None, layer_inputs=inputs)
    assert filled["group_size"] == size and filled["sym"] is True
    assert (f"--group-size {size}" in note) if size else "--group-size" not in note
    if why is not None:
        assert why in note


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

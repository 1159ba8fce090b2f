"""Methods are compositions: the prune's own solve, an optional refinement, an optional GPTQ
after. Pinned here against the solver calls written out by hand (the compositions as they were
before option groups) and against the report keys of before, which reports compare byte for byte."""

import dataclasses

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.methods import build_method
from prunellm.solvers import (GPTQConfig, MagnitudeConfig, SolveResult, SparseGPTConfig, WandaConfig, gptq, magnitude,
                              refine_on_mask, sparsegpt, wanda)
from prunellm.solvers.alps import alps_refine
from tests.conftest import layer_problem

QUANT = {"bits": 16, "group_size": None, "sym": False, "act_order": True, "block_size": 128, "damp_frac": 0.01,
         "gguf": None, "hessian_shrink": 0.0}
REFINE = {"refine": "none", "refine_iters": 50}
DESCRIBED = {  # method: describe() with no options, keys in the order reports have them
    "gptq": {"method": "gptq", "bits": 4, "group_size": None, "sym": False, "act_order": True, "block_size": 128,
             "damp_frac": 0.01, "keep_zeros": True, "gguf": None, "hessian_shrink": 0.0, "refit_scales": True},
    "magnitude": {"method": "magnitude", **QUANT, **REFINE, "sparsity": 0.5, "nm": None, "per_row": False},
    "noop": {"method": "noop"},
    "sparsegpt": {"method": "sparsegpt", **REFINE, "sparsity": 0.5, "nm": None, "bits": 16, "group_size": None,
                  "sym": False, "block_size": 128, "damp_frac": 0.01, "gguf": None},
    "wanda": {"method": "wanda", **QUANT, **REFINE, "sparsity": 0.5, "nm": None},
}


@pytest.mark.parametrize("name", sorted(DESCRIBED))
def test_describe_keeps_the_report_keys_and_their_order(name):
    described = build_method(name).describe()
    assert list(described.items()) == list(DESCRIBED[name].items())


def test_describe_shows_the_options_given():
    described = build_method("wanda", nm="2:4", bits=4, refine="alps").describe()
    assert described == {**DESCRIBED["wanda"], "nm": (2, 4), "bits": 4, "refine": "alps"}
    assert list(described) == list(DESCRIBED["wanda"])


def after(pruned: SolveResult, H, **gptq_options) -> SolveResult:
    quantized = gptq(pruned.weight, H, GPTQConfig(keep_zeros=True, **gptq_options))
    quantized.mask = pruned.mask
    return quantized


def lsq(W, H, pruned, iterations):
    return SolveResult(refine_on_mask(W, H, pruned.weight, pruned.mask, iterations=iterations), pruned.mask)


def alps(W, H, pruned, iterations, **budget):
    return SolveResult(*alps_refine(W, H, pruned.weight, pruned.mask, cg_iterations=iterations, **budget))


W, H = layer_problem(rows=16, cols=64)
CASES = {
    "sparsegpt": (dict(sparsity=0.6, bits=4, group_size=16),
                  lambda: sparsegpt(W, H, SparseGPTConfig(0.6, bits=4, group_size=16))),
    "sparsegpt lsq 4 bits": (dict(nm="2:4", bits=4, sym=True, refine="lsq", refine_iters=5),
                             lambda: after(lsq(W, H, sparsegpt(W, H, SparseGPTConfig(nm="2:4")), 5), H, bits=4,
                                           sym=True)),
    "wanda alps 3 bits": (dict(bits=3, act_order=False, hessian_shrink=0.3, refine="alps", refine_iters=5),
                          lambda: after(alps(W, H, wanda(W, H, WandaConfig()), 5), H, bits=3, act_order=False,
                                        hessian_shrink=0.3)),
    "magnitude per row alps": (dict(per_row=True, refine="alps", refine_iters=5),
                               lambda: alps(W, H, magnitude(W, MagnitudeConfig(per_row=True)), 5, per_row=True)),
    "magnitude q4_0": (dict(sparsity=0.4, gguf="q4_0"),
                       lambda: after(magnitude(W, MagnitudeConfig(0.4)), H, gguf="q4_0")),
    "gptq": (dict(bits=3, group_size=32, keep_zeros=False),
             lambda: gptq(W, H, GPTQConfig(bits=3, group_size=32, keep_zeros=False))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compress_is_the_solver_calls_in_order(case):
    options, expected = CASES[case]
    name = case.split()[0]
    got, want = build_method(name, **options).compress(W.clone(), H.clone()), expected()
    assert torch.equal(got.weight, want.weight) and torch.equal(got.mask, want.mask)


def test_statistics_and_lending_follow_the_steps():
    assert build_method("wanda", refine="lsq").statistics == "hessian"
    assert build_method("magnitude", gguf="q8_0").statistics == "hessian"
    assert build_method("sparsegpt").overwrites_lent_hessian
    assert not build_method("sparsegpt", refine="lsq").overwrites_lent_hessian
    assert not build_method("sparsegpt", sparsity=0.0, bits=4).overwrites_lent_hessian  # GPTQ's path


def test_config_reads_every_option_and_only_the_methods_own():
    config = build_method("magnitude", nm="2:4", bits=4).config
    assert (config.nm, config.bits, config.per_row, config.quantizes, config.refines) == ((2, 4), 4, False, True, False)
    assert build_method("sparsegpt", sparsity=0.0, bits=4).config.quantizes_only
    assert getattr(build_method("gptq").config, "sparsity", None) is None
    assert not hasattr(build_method("noop").config, "refine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.groups = ()


def test_each_group_checks_its_options_in_the_methods_order():
    # The prune's options are checked first, then the refinement's, then the quantization's.
    with pytest.raises(PrunellmError, match="sparsity must be in"):
        build_method("wanda", sparsity=1.5, refine="x", bits=1)
    with pytest.raises(PrunellmError, match="unknown refinement 'x'"):
        build_method("wanda", refine="x", bits=1)
    with pytest.raises(PrunellmError, match="does not take act_order; it takes bits, block_size"):
        build_method("sparsegpt", act_order=False)


def test_allocation_and_gguf_mixtures_clone_the_method():
    method = build_method("sparsegpt", sparsity=0.5, refine="lsq")
    thinner = method.with_sparsity(0.7)
    assert (thinner.config.sparsity, thinner.config.refine, method.config.sparsity) == (0.7, "lsq", 0.5)
    mixed = build_method("gptq", gguf="q4_k_m")
    assert mixed.for_layer("model.layers.0.mlp.down_proj", 0, 8).config.gguf == "q6_k"
    assert mixed.for_layer("model.layers.3.self_attn.q_proj", 3, 8).config.gguf == "q4_k"
    with pytest.raises(PrunellmError, match="no unstructured sparsity"):
        build_method("wanda", nm="2:4").with_sparsity(0.3)

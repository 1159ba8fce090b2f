"""What the command line builds its method flags from: `option_specs()`."""

import dataclasses

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.methods import Method, build_method, method_names, option_specs, register
from prunellm.methods import registry
from prunellm.methods.options import SPARSITY, option, shrink_setting
from prunellm.methods.quantize_after import QuantOptions
from prunellm.solvers import SolveResult


def test_every_option_has_help_a_type_and_its_methods():
    specs = option_specs()
    assert {"sparsity", "nm", "bits", "group_size", "sym", "act_order", "per_row", "hessian_shrink", "block_size",
            "damp_frac", "refine", "refine_iters", "gguf", "keep_zeros", "refit_scales"} <= set(specs)
    for spec in specs.values():
        assert spec.help and spec.type in (int, float, str, bool, shrink_setting) and spec.methods
    assert specs["bits"].defaults == {"gptq": 4, "magnitude": 16, "sparsegpt": 16, "wanda": 16}
    assert specs["bits"].default is None and specs["sparsity"].default == 0.5
    assert specs["per_row"].methods == ("magnitude",)
    assert "sparsegpt" not in specs["act_order"].methods
    assert specs["nm"].type is str and specs["group_size"].type is int
    assert specs["hessian_shrink"].type("auto") == "auto" and specs["hessian_shrink"].type("0.5") == 0.5
    assert specs["refine"].choices == ("none", "lsq", "alps") and specs["refine"].flag == "--refine"
    assert specs["refine_iters"].flag == "--refine-iters"
    assert {name for name, spec in specs.items() if spec.flag is None} == {"gguf", "keep_zeros", "refit_scales"}


def test_the_specs_take_what_each_method_takes():
    specs = option_specs()
    for name in method_names():
        taken = {option for option, spec in specs.items() if name in spec.methods}
        build_method(name, **{option: specs[option].defaults[name] for option in taken})
        with pytest.raises(PrunellmError, match="does not take"):
            build_method(name, **{next(o for o in specs if o not in taken): None})


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_new_method_is_one_class_and_its_registration(scratch_registry):
    @dataclasses.dataclass
    class HalfOptions:
        sparsity: float = option(0.5, SPARSITY)
        scale: float = option(0.5, "scale every weight by this")

    @register
    class Half(Method):
        name = "half"
        option_groups = (HalfOptions, QuantOptions)
        needs = "none"

        def solve(self, weight, hessian, **lent):
            return SolveResult(weight * self.config.scale, torch.zeros_like(weight, dtype=torch.bool))

    specs = option_specs()
    assert specs["scale"].methods == ("half",) and specs["scale"].flag == "--scale" and specs["scale"].type is float
    assert "half" in specs["bits"].methods
    method = build_method("half", scale=0.25)
    assert method.statistics == "none" and method.describe()["scale"] == 0.25
    assert torch.equal(method.compress(torch.ones(2, 4), None).weight, torch.full((2, 4), 0.25))
    assert build_method("half", bits=4).statistics == "hessian"


def test_an_option_must_read_the_same_in_every_method(scratch_registry):
    @dataclasses.dataclass
    class Other:
        sparsity: float = option(0.5, "another wording")

    @register
    class Odd(Method):
        name = "odd"
        option_groups = (Other,)

        def solve(self, weight, hessian, **lent):
            raise NotImplementedError

    with pytest.raises(PrunellmError, match="option 'sparsity' of 'odd' differs"):
        option_specs()

"""The sweep grid: every method at every sparsity and pattern, named stably, bad lists refused."""

import pytest

from prunellm.errors import PrunellmError
from prunellm.sweep import parse_grid
from prunellm.sweep.settings import DEFAULT_SPARSITIES, SweepSetting


def test_grid_is_methods_by_patterns_by_bits_in_order():
    grid = parse_grid("magnitude,sparsegpt", "0.5,0.7", "2:4", "none,4")
    assert [s.key for s in grid] == [
        "magnitude_50", "magnitude_70", "magnitude_2-4", "magnitude_50_w4", "magnitude_70_w4", "magnitude_2-4_w4",
        "sparsegpt_50", "sparsegpt_70", "sparsegpt_2-4", "sparsegpt_50_w4", "sparsegpt_70_w4", "sparsegpt_2-4_w4"]
    assert grid[2].label == "magnitude 2:4" and grid[2].target_sparsity == 0.5
    assert grid[3].label == "magnitude 50% 4-bit" and grid[3].series == "magnitude 4-bit"
    assert grid[3].build().config.bits == 4 and grid[2].build().config.nm == (2, 4)


def test_group_size_belongs_to_the_quantized_settings_only():
    plain, quantized = parse_grid("sparsegpt", "0.5", None, "none,4", 32)
    assert plain.group_size is None and plain.key == "sparsegpt_50" and plain.to_dict()["group_size"] is None
    assert quantized.group_size == 32 and quantized.key == "sparsegpt_50_w4g32"
    assert quantized.build().config.group_size == 32


def test_a_quantized_setting_gets_the_grid_prune_gives():
    # As `prunellm prune`: W4A16's grid with groups fitted to the model's layers, the paper's with "paper".
    quantized = parse_grid("wanda", "0.5", None, "4")[0]
    config = quantized.build("recommended", {"q": 576, "down": 1536}).config
    assert (config.group_size, config.sym, config.act_order) == (64, True, True)
    config = quantized.build("paper", {"q": 576, "down": 1536}).config
    assert (config.group_size, config.sym) == (None, False)


def test_defaults_follow_the_paper_unless_only_patterns_are_asked():
    assert [s.sparsity for s in parse_grid("wanda")] == list(DEFAULT_SPARSITIES)
    assert [s.nm for s in parse_grid("wanda", None, "2:4,4:8")] == ["2:4", "4:8"]


def test_keys_are_unique_and_file_name_safe():
    setting = SweepSetting("sparsegpt", sparsity=0.125, bits=3, group_size=128)
    assert setting.key == "sparsegpt_12.5_w3g128" and setting.pattern == "12.5%"
    assert "/" not in setting.key and ":" not in SweepSetting("wanda", nm="4:8").key


@pytest.mark.parametrize("args,message", [
    (("magnitude", "0.5,1.0"), "sparsity must be in (0, 1), got 1.0"),
    (("magnitude", "0"), "sparsity must be in (0, 1), got 0"),
    (("magnitude", "-0.1"), "sparsity must be in (0, 1)"),
    (("magnitude", "half"), "sparsity 'half' is not a number"),
    (("magnitude", None, "4:4"), "0 < n < m"),
    (("magnitude", None, "2-4"), "must look like '2:4'"),
    (("magnitude", "0.5", None, "9"), "bits must be between 2 and 8"),
    (("obs", "0.5"), "unknown method 'obs'"),
    (("gptq", "0.5"), "does not take sparsity"),
    (("wanda", "0.5", None, None, 128), "--group-size needs --bits"),
    (("", "0.5"), "empty list"),
])
def test_bad_grids_are_one_clear_error(args, message):
    with pytest.raises(PrunellmError) as error:
        parse_grid(*args)
    assert message in str(error.value) and "\n" not in str(error.value)

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.solvers import outlier_ratio, owl_sparsities


def test_outlier_ratio_counts_scores_above_threshold_times_mean():
    scores = torch.ones(100)
    scores[:2] = 100.0  # mean = 2.96; 5 × mean = 14.8
    assert outlier_ratio([scores[:50], scores[50:]], threshold=5.0) == pytest.approx(0.02)


def test_owl_keeps_the_budget_and_spares_outlier_layers():
    ratios = [0.01, 0.05, 0.02, 0.08, 0.03]
    sizes = [10, 20, 10, 40, 20]
    targets = owl_sparsities(ratios, 0.7, 0.08, sizes)
    mean = sum(t * s for t, s in zip(targets, sizes)) / sum(sizes)
    assert mean == pytest.approx(0.7, abs=1e-9)
    assert max(targets) - min(targets) == pytest.approx(0.16)
    order = sorted(range(5), key=lambda i: ratios[i])
    assert [targets[i] for i in order] == sorted(targets, reverse=True)  # more outliers, less pruning


def test_owl_degenerate_cases():
    assert owl_sparsities([0.1, 0.1], 0.5, 0.1) == [0.5, 0.5]
    assert owl_sparsities([0.1], 0.5, 0.1) == [0.5]
    with pytest.raises(PrunellmError, match="too wide"):
        owl_sparsities([0.1, 0.2], 0.9, 0.08)

import pytest
import torch

from prunellm.errors import PrunellmError
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.walker import (AllocationConfig, WalkConfig, collect_input_norms, compress_model, owl_allocation,
                             read_weight, walk_blocks)
from tests.tiny_models import tiny_model, tokens, word_tokenizer


def test_input_norms_come_from_the_dense_forward():
    model = tiny_model("llama")
    ids = tokens()
    norms = collect_input_norms(model, ids, device=torch.device("cpu"), batch_size=2)
    assert len(norms) == 21
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    step_inputs = None
    for step in walk_blocks(model, ids, device=torch.device("cpu")):
        if step.index == 2:
            step_inputs = torch.cat(step.inputs)
            break
    torch.testing.assert_close(step_inputs, hidden[2])
    q_input = model.model.layers[2].input_layernorm(hidden[2]).reshape(-1, 64)
    expected = 2.0 / q_input.shape[0] * q_input.pow(2).sum(0)
    torch.testing.assert_close(norms["model.layers.2.self_attn.q_proj"], expected, rtol=1e-4, atol=1e-6)


def test_owl_allocation_meets_the_global_budget_exactly():
    model = tiny_model("llama")
    ids = tokens()
    config = AllocationConfig("owl", owl_lambda=0.1, owl_threshold=2.0)
    norms = collect_input_norms(model, ids, device=torch.device("cpu"))
    targets = owl_allocation(model, norms, 0.6, config)
    sizes = {name: read_weight(model.get_submodule(name)).numel() for name in targets}
    mean = sum(targets[n] * sizes[n] for n in targets) / sum(sizes.values())
    assert mean == pytest.approx(0.6, abs=1e-9)
    per_block = {n.split(".")[2]: t for n, t in targets.items()}
    assert len(set(round(t, 9) for t in per_block.values())) == 3  # one target per block, not uniform
    result = compress_model(model, build_method("magnitude", sparsity=0.6), ids, WalkConfig(progress=False),
                            layer_sparsity=targets)
    zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in result.layers)
    assert zeros / sum(sizes.values()) == pytest.approx(0.6, abs=2e-3)


def test_owl_through_the_pipeline_and_refusals(tmp_path):
    words = [f"w{i}" for i in range(100)]
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(words * 5))
    model, tokenizer = tiny_model("llama"), word_tokenizer(words)
    result = prune(model, tokenizer, build_method("sparsegpt", sparsity=0.5, refine="lsq"),
                   CalibrationConfig(str(text), 4, 32),
                   WalkConfig(progress=False), AllocationConfig("owl", owl_lambda=0.05, owl_threshold=2.0))
    assert result.targets and "allocation" in result.seconds
    with pytest.raises(PrunellmError, match="no unstructured sparsity"):
        prune(tiny_model("llama"), tokenizer, build_method("sparsegpt", nm="2:4"), None, None, AllocationConfig("owl"))
    with pytest.raises(PrunellmError, match="unknown allocation"):
        AllocationConfig("random")

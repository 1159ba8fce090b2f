"""A small sweep on the real SmolLM2-135M (first 4 of 30 blocks, tiny calibration): the dense
model is evaluated once and left untouched, and the numbers behave as the papers say."""

import torch

from prunellm.pipeline import CalibrationConfig, EvalConfig
from prunellm.report import write_report
from prunellm.sweep import Sweep, SweepConfig, build_settings, load_results
from prunellm.walker import WalkConfig


def test_smollm2_sweep_sparsegpt_beats_magnitude_layer_by_layer(smollm2, data_dir, tmp_path):
    model, tokenizer = smollm2
    q_proj = model.model.layers[0].self_attn.q_proj.weight.clone()
    config = SweepConfig(
        calibration=CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), num_samples=2, seqlen=64),
        evaluation=EvalConfig(("wikitext2",), seqlen=256, max_tokens=1024, batch_size=4),
        walk=WalkConfig(last_block=3, progress=False))
    settings = build_settings(("magnitude", "sparsegpt"), (0.6,), ())
    rows = list(Sweep(model, tokenizer, settings, config, tmp_path / "sweep", model_source="smollm2").run())
    dense, magnitude, sparsegpt = (row["perplexity"]["wikitext2"] for row in rows)
    print(f"wikitext2 (1024 tokens, seqlen 256): dense {dense:.2f}, magnitude 60% {magnitude:.2f}, "
          f"sparsegpt 60% {sparsegpt:.2f} (blocks 0-3)")
    assert 15 < dense < 60  # SmolLM2-135M: about 30 at seqlen 512
    assert dense < sparsegpt < magnitude
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q_proj)  # settings prune copies

    results = load_results(tmp_path / "sweep")
    assert [r["key"] for r in results.rows] == ["dense", "magnitude_60", "sparsegpt_60"]
    errors = {r["method"]: {x["name"]: x["relative_error"] for x in r["layers"]} for r in results.compressed}
    assert len(errors["sparsegpt"]) == 4 * 7  # 4 blocks x (q, k, v, o, gate, up, down)
    assert all(name.startswith(("model.layers.0.", "model.layers.1.", "model.layers.2.", "model.layers.3."))
               for name in errors["sparsegpt"])
    # The OBS update compensates what the mask removes: lower error on every single layer.
    assert all(errors["sparsegpt"][name] < errors["magnitude"][name] for name in errors["sparsegpt"])
    for row in results.compressed:
        assert abs(row["achieved_sparsity"] - 0.6) < 1e-3
    assert not (tmp_path / "sweep" / "plots").exists()  # the sweep writes results; figures are the report's
    write_report(tmp_path / "sweep")
    assert {p.name for p in (tmp_path / "sweep" / "plots").iterdir()} == {"perplexity.png", "layer_errors.png"}

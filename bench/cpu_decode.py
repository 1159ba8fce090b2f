"""What keeping layers compressed costs a CPU at decode: one token through a LLaMA-7B linear
layer, dense float16 against CompressedLinear (bands of rows expanded in cache) against
expanding the whole layer per call.

Layers at LLaMA-7B shapes (out x in: 4096x4096, 11008x4096, 4096x11008), pruned and rounded as
bench/sizes.py does; times are medians of --repeats calls after a warm-up, on however many
threads torch uses (`torch.get_num_threads()`, printed).

    python bench/cpu_decode.py --json bench/results/cpu_decode_7b_shapes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

from prunellm.formats.compressed.layer import compress_weight, decompress_weight
from prunellm.runtime.linear import CompressedLinear

from alps_projection import median_ms  # noqa: E402  (bench/ is first on sys.path)
from sizes import SETTINGS, compress_like  # noqa: E402
from smollm2_table import machine  # noqa: E402

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="2:4,50%,4-bit grouped,2:4 + 4-bit grouped,50% + 4-bit grouped")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"threads: {torch.get_num_threads()}")
    for shape in SHAPES:
        weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        x = torch.randn(1, shape[1], dtype=torch.float16)
        for setting in [s.strip() for s in args.settings.split(",")]:
            sparsity, nm, bits, grouped = SETTINGS[setting]
            pruned, grid = compress_like(weight, sparsity, nm, bits, 128 if grouped else None)
            dense = pruned.to(torch.float16)
            packed = compress_weight(dense, grid, nm)
            layer = CompressedLinear(packed)
            assert torch.equal(layer(x), F.linear(x, dense))
            row = {"shape": list(shape), "setting": setting, "layout": packed.spec.layout,
                   "dense_ms": median_ms(lambda: F.linear(x, dense), args.repeats),
                   "banded_ms": median_ms(lambda: layer(x), args.repeats),
                   "whole_layer_ms": median_ms(lambda: F.linear(x, decompress_weight(packed)), args.repeats)}
            rows.append(row)
            print(f"{shape[0]:>5}x{shape[1]:<5} {setting:<22} dense {row['dense_ms']:6.1f} ms  compressed "
                  f"{row['banded_ms']:6.1f} ms ({row['banded_ms'] / row['dense_ms']:5.1f}x)  whole-layer expansion "
                  f"{row['whole_layer_ms']:6.1f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=1))
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()

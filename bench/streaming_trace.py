"""Where a streamed prune's memory goes: peak anonymous and resident memory per phase (block
entry, each layer's solve, block exit, unit copies), printed as the run goes.

Runs `prunellm prune MODEL --stream` in this process with the streaming host's and the walker's
steps wrapped, and a thread that samples RssAnon and VmRSS every 10 ms. Each line: the phase that just
ended, its peak, and the level it left. Use a model built by bench/streaming.py:

    python bench/streaming.py --hidden 1024 --intermediate 2816 --heads 8 --blocks 8 --skip-memory
    python bench/streaming_trace.py /tmp/prunellm-bench-streaming/model-1024-2816-8-32000-8 \\
        --calib /tmp/prunellm-bench-streaming/calib.txt
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from pathlib import Path

from streaming import status  # bench/streaming.py, beside this file (a script's directory is on its path)


class PhaseTrace(threading.Thread):
    """Peak anonymous and total resident memory (RssAnon, VmRSS: mapped file pages too) per phase."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        now = status()
        self.peak, self.peak_rss = now["RssAnon"], now["VmRSS"]
        self.phase = "start"

    def run(self) -> None:
        while True:
            now = status()
            self.peak, self.peak_rss = max(self.peak, now["RssAnon"]), max(self.peak_rss, now["VmRSS"])
            time.sleep(0.01)

    def mark(self, next_phase: str) -> None:
        now = status()
        print(f"{self.phase:>40}: peak {self.peak >> 20:5d} MiB, left {now['RssAnon'] >> 20:5d} MiB; "
              f"resident peak {self.peak_rss >> 20:5d} MiB", flush=True)
        self.phase, self.peak, self.peak_rss = next_phase, now["RssAnon"], now["VmRSS"]

    def wrap(self, owner: object, attribute: str, label) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def traced(*args, **kwargs):
            self.mark(label(args))
            try:
                return original(*args, **kwargs)
            finally:
                self.mark(f"after {label(args)}")

        setattr(owner, attribute, traced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a safetensors model directory")
    parser.add_argument("--calib", required=True)
    parser.add_argument("--num-samples", default="16")
    parser.add_argument("--seqlen", default="512")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--sparsity", default="0.5")
    args, extra = parser.parse_known_args()  # anything else goes to prunellm prune as it is

    import prunellm.streaming.host as streaming_host
    import prunellm.walker.compress as compress
    from prunellm.cli import main as prunellm

    trace = PhaseTrace()
    trace.start()
    host = streaming_host.StreamingHost
    trace.wrap(host, "enter", lambda a: f"enter block {a[1]}")
    trace.wrap(host, "park", lambda a: f"park block {a[1]}")  # "after enter" is the statistics pass
    trace.wrap(host, "leave", lambda a: f"leave block {a[1]}")
    trace.wrap(host, "copy_unit", lambda a: f"copy {a[1]}")
    trace.wrap(compress, "_compress_layer", lambda a: f"solve {a[0]}")
    with tempfile.TemporaryDirectory() as out:
        code = prunellm(["prune", args.model, "--calib", args.calib, "--num-samples", args.num_samples,
                         "--seqlen", args.seqlen, "--method", args.method, "--sparsity", args.sparsity,
                         "--out", str(Path(out) / "pruned"), "--quiet", "--stream", *extra])
        trace.mark("end")
    print(f"VmHWM {status()['VmHWM'] >> 20} MiB")
    raise SystemExit(code)


if __name__ == "__main__":
    main()

"""Prune a model larger than memory, one decoder block at a time.

run.py: `prune_streaming`, the whole streamed run (skeleton, calibration, walk, finish).
host.py: the walk host that reads a block from disk, hands it to the walker and writes it back.
resume.py: the state a killed run resumes from. shards.py: the output's shards and index.
heap.py: handing freed memory back to the system between blocks.
"""

from .run import StreamedRun, prune_streaming

__all__ = ["StreamedRun", "prune_streaming"]

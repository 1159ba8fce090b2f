"""A GGUF file's dequantized model, converted once and kept as a Hugging Face directory.

transformers converts a GGUF on every load: it parses the file's metadata three times (for the
config, the weights and the tokenizer) and dequantizes every tensor, slowly even for a small
model. prunellm saves the result once, in float32 (the dequantized values exactly), and loads
that directory afterwards several times faster (bench/README.md, "Loading a GGUF model"). An entry is keyed by the file's resolved
path, size and modification time, transformers' version (it does the conversion) and this
module's format version; it is written under a temporary name and renamed, so it is whole or
absent, and a failure to write it only costs the next run the conversion again.

Where: $PRUNELLM_CACHE_DIR (`off` disables the cache), else $XDG_CACHE_HOME/prunellm or
~/.cache/prunellm, under `gguf/`. Only files up to MAX_GGUF_BYTES are cached: an entry takes
float32 bytes, five to eight times a 4-bit file, and a large model would first have to be
dequantized whole in host memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from prunellm.io.atomic import atomic_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CACHE_ENV = "PRUNELLM_CACHE_DIR"
DISABLED = ("off", "none", "0", "")
MAX_GGUF_BYTES = 512 << 20  # small models only: the float32 copy takes several times the file's size
FORMAT_VERSION = 1


def cache_root() -> Path | None:
    """The cache directory, or None when $PRUNELLM_CACHE_DIR turns the cache off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in DISABLED else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunellm"


def entry_for(gguf: Path) -> Path | None:
    """Where the converted model of `gguf` is (or would be) kept; None when not cached at all
    (cache off, or a file too large)."""
    root = cache_root()
    if root is None:
        return None
    resolved = gguf.expanduser().resolve()
    stat = resolved.stat()
    if stat.st_size > MAX_GGUF_BYTES:
        return None
    import transformers

    key = json.dumps([str(resolved), stat.st_size, stat.st_mtime_ns, transformers.__version__, FORMAT_VERSION])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "gguf" / f"{resolved.stem}-{digest}"


def lookup(gguf: Path) -> Path | None:
    """The cached directory of `gguf`, when a previous load wrote one."""
    entry = entry_for(gguf)
    return entry if entry is not None and entry.is_dir() else None


def store(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf: Path) -> Path | None:
    """Save a float32 model freshly converted from `gguf` (and its tokenizer) as its cache entry.
    Returns the entry, or None when it was not written (cache off, too large, no room, an
    error: each logged, none fatal)."""
    entry = entry_for(gguf)
    if entry is None:
        return None
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(entry.parent).free
        if free < 2 * size:
            log.info("not caching the converted %s: %d MB free in %s, %d MB needed", gguf.name, free >> 20,
                     entry.parent, size >> 20)
            return None
        with atomic_path(entry) as staging:  # flushed, then renamed: whole or absent after a crash
            staging.mkdir()
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except (OSError, RuntimeError, ValueError) as error:  # a full disk, a read-only home, a refusing saver
        if entry.is_dir():  # a concurrent run wrote it first: its entry is as good as ours
            return entry
        log.warning("could not cache the converted %s in %s: %s", gguf.name, entry.parent, error)
        return None
    log.info("cached the converted %s in %s (%d MB)", gguf.name, entry, size >> 20)
    return entry

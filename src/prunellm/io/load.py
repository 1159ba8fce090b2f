"""Load a causal LM and its tokenizer from a GGUF file, a Hugging Face directory or the hub."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunellm.devices import resolve_device
from prunellm.errors import PrunellmError
from prunellm.io import gguf_cache
from prunellm.io.checks import check_finite
from prunellm.io.default_model import default_model_path
from prunellm.io.dtypes import DTYPES
from prunellm.io.gguf_source import clear_gguf_marks, gguf_model_kwargs, shared_reads
from prunellm.io.source import ModelSource, resolve_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_model(
    source: str | Path | None = None,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    compute_device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM in eval mode with finite float weights, and its tokenizer.

    source: None (the bundled SmolLM2-135M GGUF), a `.gguf` file (dequantized to float; a small
    one converted once and cached, see io/gguf_cache.py),
    a directory written by `save_pretrained`, or a hub id (needs network or the HF cache). Other
    formats prunellm writes load through `prunellm.formats.load_model`.
    device: where the weights are placed. compute_device: where the model will run, when not
    there (the walker keeps the model on CPU and moves one block at a time to the GPU).
    dtype: "auto" (see `resolve_dtype`: float32 when computing on CPU, the checkpoint's dtype
    elsewhere), "float32", "float16" or "bfloat16".
    """
    target = resolve_device(device)
    compute = resolve_device(compute_device) if compute_device is not None else target
    torch_dtype = resolve_dtype(dtype, compute)
    resolved = resolve_source(default_model_path() if source is None else source)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if target.type != "cpu":
        # Place weights straight on the device rather than building a CPU copy first.
        kwargs["device_map"] = {"": target}

    converted = None
    with shared_reads() if resolved.kind == "gguf" else contextlib.nullcontext():
        if resolved.kind == "gguf":
            resolved, converted = _through_cache(resolved.location, torch_dtype, target)
        if converted is not None:
            model, tokenizer = converted
        else:
            model = _from_pretrained("model", resolved, kwargs)
        clear_gguf_marks(model)
        model.eval()
        check_finite(model)
        if converted is None:
            tokenizer = _from_pretrained("tokenizer", resolved, {})
    log.info("loaded %s (%s, %s) from %s", type(model).__name__, model.dtype, target, resolved.location)
    return model, tokenizer


def _through_cache(path: Path, dtype: torch.dtype | str, device: torch.device
                   ) -> tuple[ModelSource, tuple[PreTrainedModel, PreTrainedTokenizerBase] | None]:
    """A GGUF source by way of its converted copy (io/gguf_cache.py): the cached directory when
    there is one; else the GGUF converted now, in float32 on CPU, and cached. Returns the source to
    load from, and the model and tokenizer when this call already has them in the wanted dtype
    and place. "auto" dtypes and uncacheable files load from the GGUF as before."""
    cached = gguf_cache.lookup(path) if isinstance(dtype, torch.dtype) else None
    if cached is not None:
        return ModelSource("dir", cached), None
    source = ModelSource("gguf", path)
    if not isinstance(dtype, torch.dtype) or gguf_cache.entry_for(path) is None:
        return source, None
    model = _from_pretrained("model", source, {"dtype": torch.float32})
    clear_gguf_marks(model)  # save_pretrained refuses a GGUF-marked model (load_model checks the weights)
    tokenizer = _from_pretrained("tokenizer", source, {})
    entry = gguf_cache.store(model, tokenizer, path)
    if dtype == torch.float32 and device.type == "cpu":
        return source, (model, tokenizer)  # what a load from the entry gives (tests/io/test_gguf_cache.py)
    if entry is not None:  # from_pretrained's own casting and placement, as every later run will get
        return ModelSource("dir", entry), None
    return source, (model.to(device=device, dtype=dtype), tokenizer)


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer alone (a streamed prune never loads the model whole)."""
    resolved = resolve_source(source)
    cached = gguf_cache.lookup(resolved.location) if resolved.kind == "gguf" else None
    with shared_reads():
        return _from_pretrained("tokenizer", ModelSource("dir", cached) if cached else resolved, {})


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    """A torch dtype for `from_pretrained`, or "auto" to keep the checkpoint's own. `device` is
    where the model computes: the in-memory and the streamed paths both decide by it, so that
    they compute (and write) the same dtype."""
    if dtype == "auto":
        # Half-precision matmuls are many times slower than float32 on CPU.
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise PrunellmError(f"unknown dtype '{dtype}': choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _from_pretrained(what: str, source: ModelSource, kwargs: dict[str, Any]) -> Any:
    """Call the Auto class for `what` ("model" or "tokenizer"), turning failures into PrunellmError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if what == "model" else AutoTokenizer
    try:
        if source.kind == "gguf":
            path = Path(source.location)
            gguf = gguf_model_kwargs(path.name) if what == "model" else {"gguf_file": path.name}
            return auto.from_pretrained(path.parent, **gguf, **kwargs)
        return auto.from_pretrained(source.location, **kwargs)
    except PrunellmError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
        raise _load_error(what, source, error) from error


def _load_error(what: str, source: ModelSource, error: Exception) -> PrunellmError:
    reason = _first_line(error)
    if source.kind == "hub":
        from huggingface_hub.errors import LocalEntryNotFoundError

        if _caused_by(error, LocalEntryNotFoundError):
            return PrunellmError(
                f"cannot load model '{source.location}': not a local file or directory, "
                f"and the hub is unreachable ({reason})"
            )
        return PrunellmError(
            f"cannot load {what} '{source.location}': not a local file or directory, "
            f"and the hub did not provide it ({reason})"
        )
    return PrunellmError(f"cannot load {what} from {source.location}: {reason}")


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # chains can loop
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _first_line(error: BaseException) -> str:
    # transformers' messages span several lines; PrunellmError messages are one line.
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

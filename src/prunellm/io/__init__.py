"""Loading models (GGUF, local directory, hub), saving them atomically, and report helpers."""

from prunellm.io.atomic import write_json_atomic
from prunellm.io.checks import check_finite
from prunellm.io.default_model import default_model_path
from prunellm.io.load import load_model, load_tokenizer
from prunellm.io.save import check_output_dir, save_model
from prunellm.io.versions import library_versions

__all__ = [
    "check_finite",
    "check_output_dir",
    "default_model_path",
    "library_versions",
    "load_model",
    "load_tokenizer",
    "save_model",
    "write_json_atomic",
]

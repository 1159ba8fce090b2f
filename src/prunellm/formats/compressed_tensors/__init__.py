"""compressed-tensors output (format.py) and its writer (export.py)."""

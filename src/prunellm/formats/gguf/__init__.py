"""GGUF output for llama.cpp: the format (format.py), the file writer (export.py), block
packing (pack.py) and llama.cpp's own scoring of a file (llama_cpp.py). The grids themselves
are solver math and live in solvers/gguf_grids.py."""

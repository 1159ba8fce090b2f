"""prunellm's compressed format: layouts of one layer (layer.py, packing.py), the directory
(checkpoint.py), export from a saved run (from_directory.py), reading it back as a model
(model.py), and the format's face to the rest of prunellm (format.py)."""

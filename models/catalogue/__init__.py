"""The model catalogue: a model's configuration (``model.json``), presets, the registry of model directories,
weights and their hashes, the released MONAI bundle's import, and the MONAI networks they build."""

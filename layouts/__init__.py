"""Layout files for real models, one per model id (``<model-id>.toml``).

This directory is the package ``hybridxfer.layouts`` once installed (data only, no code):
``hybridxfer.layout.builtin_layout_path(model_id)`` finds a file here from a checkout's
editable install and from a wheel alike.
"""

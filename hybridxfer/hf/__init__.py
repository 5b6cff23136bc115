"""Derive layout files from Hugging Face ``config.json`` files.

:func:`layout_from_hf_config` applies one set of per-architecture rules (which layer holds
what, every dimension) and the cache arrangement of the engine asked for — vLLM 0.33
(pooled pages, model-form DSL) or Hugging Face transformers 5.20 (one region per
``DynamicCache`` tensor, memory form). It never guesses for an unknown architecture
(:class:`UnsupportedModelError` lists the supported ones).
"""

from __future__ import annotations

from hybridxfer.hf._errors import UnsupportedModelError
from hybridxfer.hf._importer import (
    ENGINES,
    SUPPORTED_ARCHITECTURES,
    layout_from_hf_config,
    write_layout_from_hf,
)

__all__ = [
    "ENGINES",
    "SUPPORTED_ARCHITECTURES",
    "UnsupportedModelError",
    "layout_from_hf_config",
    "write_layout_from_hf",
]

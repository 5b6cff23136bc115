"""Derive layout files from Hugging Face ``config.json`` files.

:func:`layout_from_hf_config` applies the cache rules of the serving engine (vLLM 0.33) for
the supported architectures and returns model-form DSL text; it never guesses for an
unknown architecture (:class:`UnsupportedModelError` lists the supported ones).
"""

from __future__ import annotations

from hybridxfer.hf._cli import main_from_hf
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
    "main_from_hf",
    "write_layout_from_hf",
]

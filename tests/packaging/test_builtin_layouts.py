"""The shipped layouts are found by model id, and they are the repository's own files.

The repository holds one copy of each layout file (``layouts/``); the install maps it into
the package as ``hybridxfer.layouts``. These tests pin both halves: the lookup lists
exactly the model files, and each path it gives is the checkout's file (an editable
install reads the single copy, so an edit is never shadowed by a stale duplicate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import builtin_layout_path, builtin_layouts, load_layout

LAYOUTS = Path(__file__).resolve().parents[2] / "layouts"
MODEL_IDS = sorted(p.stem for p in LAYOUTS.glob("*.toml"))


def test_lists_exactly_the_model_files() -> None:
    assert len(MODEL_IDS) == 10
    assert builtin_layouts() == tuple(MODEL_IDS)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_path_is_the_repository_file(model_id: str) -> None:
    path = builtin_layout_path(model_id)
    assert path.resolve() == (LAYOUTS / f"{model_id}.toml").resolve()
    assert load_layout(path).model == model_id


@pytest.mark.parametrize(
    "name",
    ["no-such-model", "", "NEMOTRON-3-NANO-30B-A3B", "nemotron-3-nano-30b-a3b.toml", "../setup", "__init__",
     "examples/jamba-v0.1-memory-form", "jamba-v0.1-memory-form"],
)
def test_unknown_id_is_a_layout_error_listing_the_shipped_ones(name: str) -> None:
    with pytest.raises(LayoutError) as info:
        builtin_layout_path(name)
    message = str(info.value)
    assert f"no shipped layout for model {name!r}" in message
    assert ", ".join(MODEL_IDS) in message

"""Model layer indices: what a pipeline-parallel split counts (cache-less layers included)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import dump_layout, load_layout, loads_layout

ROOT = Path(__file__).resolve().parents[2] / "layouts"

MEMORY = """
format = "hybridxfer.layout/1"
model = "toy"
model_layers = {model_layers}
layers = [{{ name = "a", spec = "s", index = {first} }}, {{ name = "b", spec = "s", index = {second} }}]

[specs.s]
kind = "attention"
num_kv_heads = 2
head_dim = 8
dtype = "float16"

[[groups]]
name = "g"
layers = ["a", "b"]

[[regions]]
name = "r"
views = [{{ layer = "a" }}, {{ layer = "b" }}]
"""


def test_pattern_with_cacheless_layers_writes_indices() -> None:
    layout = load_layout(ROOT / "nemotron-h-8b.toml")
    text = dump_layout(layout)
    assert "model_layers = 52" in text and 'index = 51' not in text and 'index = 50' in text
    assert loads_layout(text) == layout


def test_pattern_of_cache_layers_only_keeps_the_plain_form() -> None:
    layout = load_layout(ROOT / "jamba-v0.1.toml")
    assert layout.model_layers is None and all(lay.index is None for lay in layout.layers)
    assert "index" not in dump_layout(layout) and layout.num_model_layers() == 32


def test_memory_form_indices_place_the_split() -> None:
    layout = loads_layout(MEMORY.format(model_layers=6, first=1, second=4))
    assert layout.layer_indices() == {"a": 1, "b": 4}
    assert layout.stage_layers(2, 0) == ("a",) and layout.stage_layers(2, 1) == ("b",)
    assert layout.stage_layers(2, 0, (5, 1)) == ("a", "b") and layout.stage_layers(2, 1, (5, 1)) == ()


@pytest.mark.parametrize(("model_layers", "first", "second", "path", "message"), [
    (6, 3, 2, "layers[1].index", "below the previous layer's (3)"),
    (4, 1, 4, "model_layers", "the model has 4 layers but a layer has index 4"),
    (6, -1, 2, "layers[0].index", "must be non-negative"),
])
def test_bad_indices_are_layout_errors(model_layers: int, first: int, second: int, path: str, message: str) -> None:
    with pytest.raises(LayoutError, match=re.escape(message)) as info:
        loads_layout(MEMORY.format(model_layers=model_layers, first=first, second=second), source="toy.toml")
    assert path in str(info.value)

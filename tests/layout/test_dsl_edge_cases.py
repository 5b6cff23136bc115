"""Edge cases of the DSL and of sharding that once went wrong: bad ``layer_name`` formats,
an invalid spec reported once (not again as "unknown"), Mamba2 groups replicated to follow
head shards, a TOML syntax error with its line, and the shipped layouts still loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import load_layout, loads_layout

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "layouts"
DEEPSEEK = (LAYOUTS_DIR / "deepseek-v2-lite.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("value", ['"layers.{j}"', "3", '"{spec}{"'])
def test_bad_layer_name_is_a_layout_error(value: str) -> None:
    text = DEEPSEEK.replace('legend = { L = "mla" }', f'legend = {{ L = "mla" }}\nlayer_name = {value}')
    with pytest.raises(LayoutError) as info:
        loads_layout(text)
    assert info.value.problems[0].path == "model.layer_name"


def test_invalid_spec_is_not_reported_unknown() -> None:
    text = DEEPSEEK.replace("latent_dim = 576", "latent_dim = -576")
    with pytest.raises(LayoutError) as info:
        loads_layout(text)
    assert [p.path for p in info.value.problems] == ["specs.mla.latent_dim"]


def test_mamba2_groups_replicate_to_follow_head_shards() -> None:
    """Deliberately looser than vLLM's MambaMixer2 (n_groups % TP == 0 or n_groups == 1).

    With TP a multiple of n_groups each rank's heads belong to exactly one group,
    ``rank * n_groups // tp``, so replicating that group is the correct shard; hybridxfer
    accepts it (and the oracle proves transfers of it byte-exact) instead of refusing.
    """
    text = (LAYOUTS_DIR / "mamba2-2.7b.toml").read_text(encoding="utf-8").replace("n_groups = 1 ", "n_groups = 2 ")
    layout = loads_layout(text)
    conv = [p for p in layout.for_rank(4, 3).placements if p.piece.name == "conv"][0].piece
    b = [u for seg, u, _ in conv.local_units(4, 3) if seg.name == "B"][0]
    assert list(b) == [1]
    with pytest.raises(LayoutError):
        layout.for_rank(3, 0)


def test_invalid_toml_has_a_line() -> None:
    with pytest.raises(LayoutError) as info:
        loads_layout('format = "hybridxfer.layout/1"\n\n[model]\nid = "x\n')
    assert info.value.problems[0].line == 4


def test_known_good_files_still_load() -> None:
    assert load_layout(LAYOUTS_DIR / "mamba2-2.7b.toml").model == "mamba2-2.7b"

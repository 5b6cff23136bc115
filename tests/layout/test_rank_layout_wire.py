"""A rank layout travels to peers as plain data and comes back equal, or as a LayoutError
naming what is wrong — never a KeyError or TypeError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import load_layout, rank_layout_from_dict, rank_layout_from_json

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = load_layout(ROOT / "layouts" / "nemotron-h-8b.toml")


@pytest.mark.parametrize(("tp", "rank"), [(1, 0), (4, 3)])
def test_instance_dict_and_json_come_back_equal(tp: int, rank: int) -> None:
    r = LAYOUT.for_rank(tp, rank, num_blocks=7)
    back = rank_layout_from_dict(r.instance_dict())
    assert back == r and back.digest == r.digest and back.region_sizes == r.region_sizes
    assert rank_layout_from_json(r.to_json()) == r
    assert rank_layout_from_json(r.to_json().encode()) == r


def _broken(**changes: Any) -> dict[str, Any]:
    data = LAYOUT.for_rank(2, 1, num_blocks=5).instance_dict()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(("data", "paths"), [
    (_broken(tp=None), ["tp"]),
    (_broken(num_blocks="5", rank=True), ["rank", "num_blocks"]),
    (_broken(kernel_block_tokens=-1, layout=[]), ["kernel_block_tokens", "layout"]),
])
def test_malformed_fields_are_all_named(data: dict[str, Any], paths: list[str]) -> None:
    with pytest.raises(LayoutError) as info:
        rank_layout_from_dict(data, source="<peer p0>")
    assert [p.path for p in info.value.problems] == paths
    assert {p.file for p in info.value.problems} == {"<peer p0>"}


def test_a_bad_layout_inside_or_a_rank_outside_tp_is_a_layout_error() -> None:
    data = _broken()
    data["layout"] = dict(data["layout"], format="other/9")
    with pytest.raises(LayoutError, match="expected format"):
        rank_layout_from_dict(data)
    with pytest.raises(LayoutError, match="rank 3 is outside TP size 2"):
        rank_layout_from_dict(_broken(rank=3))


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", json.dumps("text")])
def test_text_that_is_not_a_rank_layout_is_a_layout_error(text: str) -> None:
    with pytest.raises(LayoutError):
        rank_layout_from_json(text)

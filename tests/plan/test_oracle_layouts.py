"""The proof: every layout in layouts/ x TP pairs x block sizes, byte-exact against the oracle."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import Layout, load_layout

from ._oracle_run import check_pairing

LAYOUTS = sorted((Path(__file__).resolve().parents[2] / "layouts").rglob("*.toml"))
TPS = (1, 2, 4, 8)


@functools.lru_cache(maxsize=None)
def _load(path: Path) -> Layout:
    return load_layout(path)


def _allowed(layout: Layout, tp: int) -> bool:
    try:
        layout.for_rank(tp, 0, num_blocks=1)
    except LayoutError:
        return False
    return True


def _tokens(layout: Layout) -> int:
    """A request spanning a block boundary at every TP, the same for every pair of a layout
    (so consecutive cases reuse P's memory)."""
    bs = max(layout.for_rank(tp, 0, num_blocks=1).logical_block_tokens for tp in TPS if _allowed(layout, tp))
    return bs + bs // 2 + 3


CASES = [
    pytest.param(path, p, d, id=f"{path.stem}-P{p}D{d}")
    for path in LAYOUTS
    for p in TPS
    for d in TPS
]


@pytest.mark.parametrize(("path", "src_tp", "dst_tp"), CASES)
def test_every_byte_matches_the_oracle(path: Path, src_tp: int, dst_tp: int) -> None:
    layout = _load(path)
    if not (_allowed(layout, src_tp) and _allowed(layout, dst_tp)):
        # the model cannot run at this TP at all: nothing to transfer (documented in the layout)
        with pytest.raises(LayoutError):
            layout.for_rank(src_tp if not _allowed(layout, src_tp) else dst_tp, 0, num_blocks=1)
        return
    ranks = None if dst_tp <= 2 else [0, dst_tp - 1]
    check_pairing(layout, layout, src_tp, dst_tp, _tokens(layout), dst_ranks=ranks)

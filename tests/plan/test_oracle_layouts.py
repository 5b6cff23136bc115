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


def _variant(path: Path, **replace: str) -> Layout:
    text = path.read_text(encoding="utf-8")
    for old, new in replace.items():
        text = text.replace(old, new)
    from hybridxfer.layout import loads_layout

    return loads_layout(text, source=str(path))


ROOT = Path(__file__).resolve().parents[2] / "layouts"
SD = {'conv_layout = "DS"': 'conv_layout = "SD"'}


@pytest.mark.parametrize("model", ["nemotron-3-nano-30b-a3b", "jamba-v0.1", "qwen3-next-80b-a3b", "granite-4.0-h-tiny"])
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 4), (4, 2), (2, 2)])
@pytest.mark.parametrize("which", ["dst-SD", "both-SD"])
def test_conv_state_in_sd_layout(model: str, src_tp: int, dst_tp: int, which: str) -> None:
    """SD conv state (rows of [x|B|C]) is sliced zero-copy, one run per conv row; P and D
    may even hold the conv state in different layouts (engine-agnostic transfer)."""
    path = ROOT / f"{model}.toml"
    dst = _variant(path, **SD)
    src = dst if which == "both-SD" else _load(path)
    check_pairing(src, dst, src_tp, dst_tp, _tokens(dst), dst_ranks=[dst_tp - 1])


@pytest.mark.parametrize(
    ("model", "src_sizes", "dst_sizes"),
    [
        ("nemotron-3-nano-30b-a3b", (2096, 16), (2112, 32)),   # FlashInfer-like kernel blocks, other logical size
        ("nemotron-3-nano-30b-a3b", (2096, 2096), (2096, 16)),  # ratio 1 on P, 131 kernel blocks per block on D
        ("jamba-v0.1", (80, 16), (96, 32)),
        ("qwen3-next-80b-a3b", (544, 32), (576, 64)),
        ("llama-3.1-8b", (16, 16), (32, 8)),
        ("deepseek-v2-lite", (64, 64), (128, 32)),
    ],
)
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 2), (2, 1)])
def test_block_bridging_between_different_block_sizes(model: str, src_sizes: tuple[int, int],
                                                      dst_sizes: tuple[int, int], src_tp: int, dst_tp: int) -> None:
    """P and D with different logical AND kernel block sizes, bridged by token position."""
    layout = _load(ROOT / f"{model}.toml")
    tokens = max(src_sizes[0], dst_sizes[0]) * 2 + 5
    check_pairing(layout, layout, src_tp, dst_tp, tokens, src_sizes=src_sizes, dst_sizes=dst_sizes,
                  dst_ranks=[dst_tp - 1])


@pytest.mark.parametrize("coalesce", [True, False])
def test_coalescing_changes_descriptors_not_bytes(coalesce: bool) -> None:
    layout = _load(ROOT / "nemotron-3-nano-30b-a3b.toml")
    plans = check_pairing(layout, layout, 2, 2, 3000, dst_ranks=[1], coalesce=coalesce)
    stats = plans[0].statistics
    # exactly the request's 3000 tokens move, not the unused slots of its last block
    assert stats.bytes == 6 * 3000 * 512 + 23 * 1_067_008
    assert (stats.descriptor_count < stats.descriptor_count_uncoalesced) == coalesce

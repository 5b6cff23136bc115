"""The bytes a grant covers, checked against the plan: every row any D rank's plan reads for
a request lies inside that request's ranges on its P rank, and a neighbouring request's rows
do not (the negative control)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridxfer.errors import BlockIdError
from hybridxfer.layout import Layout, load_layout
from hybridxfer.plan import compile_plan, request_ranges
from hybridxfer.synthetic import blocks_for, request_tables
from hybridxfer.transport import ByteRanges, GrantTable

ROOT = Path(__file__).resolve().parents[2] / "layouts"
TOKENS = 300  # several blocks, the last one partial


def _layout(model: str) -> Layout:
    return load_layout(ROOT / f"{model}.toml")


@pytest.mark.parametrize("model", ["nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b"])
@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 1), (1, 4), (4, 2)])
def test_every_planned_row_lies_inside_the_request_ranges(model: str, src_tp: int, dst_tp: int) -> None:
    layout = _layout(model)
    requests = 3
    src = [layout.for_rank(src_tp, r, num_blocks=blocks_for(layout, src_tp, TOKENS, requests=requests, rank=r))
           for r in range(src_tp)]
    granted = 0
    for d in range(dst_tp):
        dst = layout.for_rank(dst_tp, d, num_blocks=blocks_for(layout, dst_tp, TOKENS, requests=requests, rank=d))
        plan = compile_plan(src, dst).bind(request_tables(src[0], TOKENS, 1), request_tables(dst, TOKENS, 1),
                                           num_tokens=TOKENS)
        for rank in plan.source_ranks:
            own = request_ranges(src[rank], request_tables(src[rank], TOKENS, 1))
            neighbour = request_ranges(src[rank], request_tables(src[rank], TOKENS, 2))
            table = GrantTable()
            table.grant("r1", "d", ByteRanges(own.region, own.offset, own.length))
            table.grant("r2", "other", ByteRanges(neighbour.region, neighbour.offset, neighbour.length))
            rows = plan.descriptors.by_source()[rank]
            # plan region indices name regions of P's layout; the grant's index this rank's
            names = plan.src_region_names
            region = np.array([src[rank].region_index(names[i]) for i in rows.src_region.tolist()], dtype=np.int64)
            assert table.authorize("d", region, rows.src_offset, rows.length) is None
            granted += rows.total_bytes
            # negative control: the same rows against the neighbour's grant are refused
            refused = table.authorize("other", region, rows.src_offset, rows.length)
            assert refused is not None and "outside every live grant of peer 'other'" in refused
            # and a row shifted one page onto the next request's blocks is refused for "d"
            page = np.array([src[rank].region_page_bytes[i] for i in region.tolist()], dtype=np.int64)
            per_request = sum(len(v) for v in request_tables(src[rank], TOKENS, 0).values())
            assert table.authorize("d", region, rows.src_offset + page * per_request, rows.length) is not None
    assert granted > 0


def test_ranges_are_the_pieces_of_the_listed_blocks_only() -> None:
    layout = _layout("nemotron-3-nano-30b-a3b")
    rank = layout.for_rank(1, 0, num_blocks=8)
    one = request_ranges(rank, {g.name: [] for g in layout.groups} | {layout.groups[0].name: [3]})
    expected = sum(p.piece.nbytes * (rank.blocks_per_kernel if p.piece.has_tokens else 1)
                   for p in rank.placements if p.group == layout.groups[0].name)
    assert one.total_bytes == expected
    for name, spans in one.by_name().items():
        page = rank.region_page_bytes[rank.region_index(name)]
        for offset, length in spans:
            assert (offset % (page * rank.num_blocks)) // page == 3
            assert (offset + length - 1) % (page * rank.num_blocks) // page == 3
    with pytest.raises(BlockIdError, match="outside"):
        request_ranges(rank, {layout.groups[0].name: [8]})
    with pytest.raises(BlockIdError, match="lacks"):
        request_ranges(rank, {"nope": [0]})

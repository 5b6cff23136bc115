"""NIXL WRITE descriptors: a write's source columns address OUR memory, its destination
columns the PEER's — the reverse of a READ — and both are bounds-checked before NIXL.

The bytes themselves are checked by the public conformance suite's write checks, run for
real against this plugin (``test_nixl_conformance.py``, in-process and into a peer
process); this pins the orientation with addresses a wrong orientation cannot produce.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridxfer.errors import TransferError
from hybridxfer.transport import Descriptors

from hybridxfer_nixl._descs import RegionTable, build_descriptors
from hybridxfer_nixl._envelope import RegionEntry

OURS = RegionTable.from_entries([RegionEntry("a", 0x10_0000, 4096, "host", 0),
                                 RegionEntry("b", 0x20_0000, 8192, "host", 0)])
PEERS = RegionTable.from_entries([RegionEntry("kv", 0x900_0000, 65536, "host", 0)])


def _rows(*rows: tuple[int, int, int, int, int]) -> Descriptors:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 5).T
    return Descriptors(*(np.ascontiguousarray(c) for c in cols))


def test_write_takes_sources_from_our_table_and_destinations_from_the_peers() -> None:
    rows = _rows((1, 100, 0, 5000, 64), (0, 0, 0, 0, 0), (0, 4000, 0, 60000, 96))
    pair = build_descriptors(rows, OURS, PEERS, "WRITE")
    assert pair.local.tolist() == [[0x20_0000 + 100, 64, 0], [0x10_0000 + 4000, 96, 0]]  # empty row dropped
    assert pair.remote.tolist() == [[0x900_0000 + 5000, 64, 0], [0x900_0000 + 60000, 96, 0]]
    assert (pair.local_mem, pair.remote_mem) == ("DRAM", "DRAM")
    # the same rows as a READ would index the other tables: here they do not fit at all
    with pytest.raises(TransferError, match="read refused"):
        build_descriptors(rows, OURS, PEERS, "READ")


@pytest.mark.parametrize("rows", [
    _rows((0, 4000, 0, 0, 200)),  # crosses the end of our region 0
    _rows((2, 0, 0, 0, 8)),  # we have no region 2
    _rows((0, 0, 0, 65500, 100)),  # crosses the end of the peer's region
    _rows((0, 0, 1, 0, 8)),  # the peer has no region 1
])
def test_write_rows_outside_either_side_are_refused_before_nixl(rows: Descriptors) -> None:
    with pytest.raises(TransferError, match="write refused, no byte moved"):
        build_descriptors(rows, OURS, PEERS, "WRITE")

"""TCP writes, receiving side: the server refuses what lies outside its own regions, whatever
the writer believes, and a refused write leaves its memory and the connection intact.

The conformance suite's write checks run through ``TcpTransport.write``, which refuses bad
rows before sending; these tests get past that check (a forged region table, a raw frame)
to reach the server's own.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from hybridxfer.errors import TransferError
from hybridxfer.testing._checks import SENTINEL, batch, region_of
from hybridxfer.transport.tcp import TcpTransport, _wire
from hybridxfer.transport.tcp._io import send_runs, send_views
from hybridxfer.transport.tcp._write import write_on_connection

SECRET = "write-secret"


@pytest.mark.anyio
async def test_server_refuses_rows_outside_its_regions_and_stays_usable() -> None:
    src = np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8)
    backing = np.full(8192, SENTINEL, np.uint8)  # only the first 4096 bytes are registered
    with anyio.fail_after(20):
        async with TcpTransport(name="d", secret=SECRET) as d, TcpTransport(name="p", secret=SECRET) as p:
            await d.register([region_of("kv", backing[:4096])])
            await p.register([region_of("src", src)])
            peer = await p.connect(d.local_metadata())
            peer.region_lengths = (8192, 64)  # the writer's view is wrong: its own check passes
            for rows in (batch(0, 0, 0, 4000, 200), batch(0, [0, 0], [0, 1], [0, 0], 8)):
                with pytest.raises(TransferError, match="peer refused the write, no byte written"):
                    await p.write(peer, rows)
                assert (backing == SENTINEL).all()
            idle = list(peer._idle)
            await p.write(peer, batch(0, 100, 0, 0, 4096))  # the same connection, still usable
            assert peer._idle == idle
    assert np.array_equal(backing[:4096], src[100:4196]) and (backing[4096:] == SENTINEL).all()


@pytest.mark.anyio
async def test_total_that_disagrees_with_the_rows_is_drained_and_refused() -> None:
    src = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)
    dst = np.full(4096, SENTINEL, np.uint8)
    with anyio.fail_after(20):
        async with TcpTransport(name="d", secret=SECRET) as d, TcpTransport(name="p", secret=SECRET) as p:
            await d.register([region_of("kv", dst)])
            await p.register([region_of("src", src)])
            peer = await p.connect(d.local_metadata())
            conn = await peer._acquire()
            # rows say 100 bytes, the frame says (and we send) 3000
            frame = _wire.encode_write_request(7, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                               np.full(1, 100, np.int64))
            frame[1] = frame[1][:12] + (3000).to_bytes(8, "big")
            await send_views(conn._sock, frame, 5)
            views = [src.data]
            await send_runs(conn._sock, views, (np.zeros(1, np.int64), np.zeros(1, np.int64),
                                                np.full(1, 3000, np.int64)), 5)
            kind, reply = await conn._frame()
            assert kind is _wire.FrameType.WRITE_ERR and isinstance(reply, _wire.WriteError)
            assert reply.seq == 7 and "declares 3000 bytes" in reply.reason
            assert (dst == SENTINEL).all()
            await write_on_connection(conn, batch(0, 0, 0, 0, 4096), views)  # drained: in sync again
            conn.close()
    assert np.array_equal(dst, src)

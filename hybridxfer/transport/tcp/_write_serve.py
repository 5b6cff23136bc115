"""Writes (push) over the TCP transport, the serving side: receive into our regions, or refuse.

The writing side (:mod:`._write`) sends one ``WRITE`` frame — destination rows and the
byte total — followed by the raw bytes. Every row is checked against *our* registered
regions before a byte is written; then the bytes are received straight into them
(``recv_into`` on a worker thread, as a read reply lands) and ``WRITE_OK`` answers. Why the
total travels separately from the lengths: a refused write's bytes are already on their
way, so we read exactly ``total`` bytes into a scratch buffer and drop them, then answer
``WRITE_ERR`` — the connection stays usable and not a byte of our memory changed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from hybridxfer.descriptors import bounds_problem, merge_ranges
from hybridxfer.transport._grants import ReadAuthorizer
from hybridxfer.transport._protocol import MemoryRegion
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._io import recv_into_views, recv_runs_in_thread, send_views

__all__ = ["serve_write"]

log = logging.getLogger("hybridxfer.transport.tcp.write")

#: Scratch buffer a refused write's bytes are drained through.
_DRAIN_BYTES = 1 << 20


async def serve_write(conn: socket.socket, client: str, req: _wire.WriteRequest,
                      entries: Sequence[tuple[MemoryRegion, memoryview]], stall_timeout: float,
                      server_name: str, authorize: ReadAuthorizer | None = None) -> None:
    """Receive one WRITE's bytes into our regions, or drain and refuse them.

    ``authorize`` (write grants): asked after the bounds check, before a byte is written.

    Cancellation (the server closing) leaves the destination ranges undefined; the
    caller closes the connection.
    """
    problem = bounds_problem(req.dst_region, req.dst_offset, req.length, [r.length for r, _ in entries],
                             side="destination")
    rows_total = int(req.length.sum()) if problem is None and len(req.length) else 0
    if problem is None and rows_total != req.total:
        problem = f"the frame declares {req.total} bytes, its rows hold {rows_total}"
    if problem is None and authorize is not None:
        problem = authorize(client, req.dst_region, req.dst_offset, req.length)
    if problem is not None:
        log.warning("tcp server %s: refused WRITE %d from %s, no byte written: %s", server_name, req.seq, client,
                    problem)
        await _drain(conn, req.total, stall_timeout)
        await send_views(conn, [_wire.encode_write_error(req.seq, problem)], stall_timeout)
        return
    runs = merge_ranges(req.dst_region, req.dst_offset, req.length)
    log.debug("tcp server %s: WRITE %d from %s: %d rows, %d runs, %d bytes", server_name, req.seq, client,
              len(req.length), len(runs[2]), req.total)
    if req.total:
        await recv_runs_in_thread(conn, [v for _, v in entries], runs, stall_timeout)
    await send_views(conn, [_wire.encode_write_ok(req.seq)], stall_timeout)


async def _drain(conn: socket.socket, total: int, stall_timeout: float) -> None:
    scratch = memoryview(bytearray(min(total, _DRAIN_BYTES)))
    left = total
    while left:
        n = min(left, len(scratch))
        await recv_into_views(conn, [scratch[:n]], stall_timeout)
        left -= n

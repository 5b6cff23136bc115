"""Writes (push) over the TCP transport, the writing side (the serving side: :mod:`._write_serve`).

The writer (a P side pushing finished layers) reaches the peer's server exactly as a
reader does — a pooled, authenticated :class:`~._client.TcpConnection`, TLS included —
and sends one ``WRITE`` frame (destination columns, the byte total) followed by the raw
bytes, straight from its registered regions with ``sendmsg`` (no copy), then waits for
``WRITE_OK`` / ``WRITE_ERR``. One round trip: push mode runs once per layer, so no extra
"ready" exchange precedes the bytes (the server drains a refused write's bytes instead).
Every byte moves through the :mod:`._io` helpers, so TLS covers writes as it covers reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from hybridxfer.descriptors import Descriptors, check_bounds, merge_ranges
from hybridxfer.errors import (
    GrantRefusedError,
    ProtocolError,
    TransferError,
    TransportError,
)
from hybridxfer.transport._grants import REFUSAL_PREFIX
from hybridxfer.transport._protocol import MemoryRegion
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._client import TcpConnection, TcpPeer
from hybridxfer.transport.tcp._io import send_runs, send_views

__all__ = ["write_batch", "write_on_connection"]


async def write_on_connection(conn: TcpConnection, descriptors: Descriptors,
                              region_views: Sequence[memoryview]) -> None:
    """One WRITE round trip on ``conn``: frame, raw bytes from ``region_views`` at the
    source columns (rows that continue each other sent as one buffer), then the reply.

    A refusal (``WRITE_ERR``) raises :class:`TransferError` and leaves the connection
    usable; anything else raises and leaves it unusable (the caller closes it).
    """
    d = descriptors
    conn._seq += 1
    seq = conn._seq
    stall = conn._options.stall_timeout
    src_runs = merge_ranges(d.src_region, d.src_offset, d.length)
    await send_views(conn._sock, _wire.encode_write_request(seq, d.dst_region, d.dst_offset, d.length), stall)
    await send_runs(conn._sock, region_views, src_runs, stall)
    frame_type, reply = await conn._frame()
    if isinstance(reply, _wire.WriteError) and reply.seq == seq:
        refusal = GrantRefusedError if reply.reason.startswith(REFUSAL_PREFIX) else TransferError
        raise refusal(f"peer refused the write, no byte written: {reply.reason}")
    if not isinstance(reply, _wire.WriteOk) or reply.seq != seq:
        raise ProtocolError(f"expected WRITE_OK for request {seq}, got {frame_type.name}")


async def _write_pooled(peer: TcpPeer, descriptors: Descriptors, region_views: Sequence[memoryview]) -> None:
    """One WRITE on a pooled connection; errors keep their class as in ``TcpPeer.read``."""
    await peer.exchange(lambda conn: write_on_connection(conn, descriptors, region_views))


async def write_batch(peer: TcpPeer, batch: Descriptors, regions: Sequence[tuple[MemoryRegion, memoryview]],
                      parts: Sequence[Descriptors]) -> None:
    """Check ``batch`` against our regions and the peer's published ones, then write
    ``parts`` (its split: one frame each, in parallel on the peer's connections)."""
    check_bounds(batch, src_lengths=[r.length for r, _ in regions], dst_lengths=peer.region_lengths,
                 operation="write")
    if batch.total_bytes == 0:
        await anyio.lowlevel.checkpoint()
        return
    views = [v for _, v in regions]
    if len(parts) == 1:
        await _write_pooled(peer, parts[0], views)
        return
    failures: list[BaseException] = []

    async def guarded(part: Descriptors, scope: anyio.CancelScope) -> None:
        try:
            await _write_pooled(peer, part, views)
        except TransportError as exc:
            failures.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for part in parts:
            tg.start_soon(guarded, part, tg.cancel_scope)
    if failures:
        raise failures[0]

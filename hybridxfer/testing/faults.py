"""``FaultInjectingTransport``: make one-sided and two-sided failures reproducible.

Why a wrapper: killing processes at the right byte is racy; wrapping any transport and
failing *exactly* the Nth read, stalling it, losing a notification or dropping the
connection mid-batch turns each fault-table row into a deterministic test — for every
transport, since the wrapper only uses the public contract (a
:class:`~hybridxfer.transport.DelegatingTransport` overriding ``read``, ``write`` and
``notify``).
"""

from __future__ import annotations

import math

import anyio

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import TransferError
from hybridxfer.transport import DelegatingTransport, PeerHandle, Transport, writable

__all__ = ["FaultInjectingTransport"]


class FaultInjectingTransport(DelegatingTransport):
    """Wraps ``inner``; counts reads/writes/notifies from 1 and injects the configured faults.

    * ``fail_read``: the Nth read raises :class:`TransferError` before moving a byte.
    * ``stall_read``: the Nth read sleeps ``stall_seconds`` (default forever) first —
      a peer that stops answering; only the caller's deadline ends it.
    * ``break_read``: the Nth read moves the first half of its rows, then raises —
      a connection closed mid-transfer (the destination is partly written).
    * ``drop_notification``: the Nth notify returns as if delivered but sends nothing.
    * ``fail_write``, ``stall_write``, ``break_write``: the same three faults for the Nth
      write (push mode), counted separately; a broken write has written the first half of
      its rows into the peer.
    """

    def __init__(self, inner: Transport, *, fail_read: int | None = None, stall_read: int | None = None,
                 stall_seconds: float = math.inf, break_read: int | None = None,
                 drop_notification: int | None = None, fail_write: int | None = None,
                 stall_write: int | None = None, break_write: int | None = None) -> None:
        super().__init__(inner)
        self.fail_read, self.stall_read, self.break_read = fail_read, stall_read, break_read
        self.stall_seconds = stall_seconds
        self.drop_notification = drop_notification
        self.fail_write, self.stall_write, self.break_write = fail_write, stall_write, break_write
        self.reads = 0
        self.writes = 0
        self.notifications = 0

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Like the inner read, with the configured fault. Cancellation: as the inner read
        (a stalled read is simply abandoned)."""
        self.reads += 1
        n = self.reads
        if n == self.fail_read:
            await anyio.lowlevel.checkpoint()
            raise TransferError(f"injected failure of read {n}")
        if n == self.stall_read:
            await anyio.sleep(self.stall_seconds)
        if n == self.break_read:
            await self.inner.read(peer, batch.slice(0, len(batch) // 2))
            raise TransferError(f"injected connection loss during read {n}")
        await self.inner.read(peer, batch)

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Like the inner write (``UnsupportedOperationError`` if it cannot write), with the
        configured fault. Cancellation: as the inner write."""
        inner = writable(self.inner)
        self.writes += 1
        n = self.writes
        if n == self.fail_write:
            await anyio.lowlevel.checkpoint()
            raise TransferError(f"injected failure of write {n}")
        if n == self.stall_write:
            await anyio.sleep(self.stall_seconds)
        if n == self.break_write:
            await inner.write(peer, batch.slice(0, len(batch) // 2))
            raise TransferError(f"injected connection loss during write {n}")
        await inner.write(peer, batch)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Like the inner notify, unless this is the notification to lose."""
        self.notifications += 1
        if self.notifications == self.drop_notification:
            await anyio.lowlevel.checkpoint()
            return
        await self.inner.notify(peer, message)

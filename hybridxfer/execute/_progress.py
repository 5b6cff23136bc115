"""Progress of a transfer as its bytes land: the per-request callback and the wrapper
that feeds it.

Why a wrapper: a transport reports nothing until a read returns, and it must stay small
(metrics live in wrappers). :class:`CountingTransport` forwards everything and, after
each read lands, reports its bytes; with ``step_bytes`` it splits a large read into
pieces of about that many bytes (rows are never cut) so progress moves during one big
request. The agent wraps its transport in one per request when ``on_progress`` is given;
the command line wraps the agent's transport in one for its progress events.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError
from hybridxfer.transport import DelegatingTransport, PeerHandle, Transport, writable

__all__ = ["CountingTransport", "ProgressCallback", "TransferProgress"]


@attrs.frozen
class TransferProgress:
    """How far one request's transfer has come (D side)."""

    request_id: str
    #: Bytes of the request that have landed in this rank's memory so far.
    bytes_done: int
    #: Bytes the request's plan moves in all (``plan.statistics.bytes``).
    bytes_total: int

    @property
    def fraction(self) -> float:
        """``bytes_done / bytes_total`` (1.0 for a request that moves nothing)."""
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


#: Called in the transfer's task after each read lands; it must return quickly and not
#: block. An exception it raises fails the transfer like a failed read.
ProgressCallback = Callable[[TransferProgress], None]


class CountingTransport(DelegatingTransport):
    """A transport that calls ``on_bytes(n)`` each time ``n`` bytes of a read have landed
    (in our memory) or of a write (in the peer's)."""

    def __init__(self, inner: Transport, on_bytes: Callable[[int], None], *,
                 step_bytes: int | None = None) -> None:
        super().__init__(inner)
        if step_bytes is not None and step_bytes < 1:
            raise InvalidArgumentError(f"step_bytes must be >= 1, got {step_bytes}")
        self._on_bytes = on_bytes
        self._step = step_bytes

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """The pieces in order, each reported once it has landed. Cancellation leaves what
        the inner transport leaves; the bytes of pieces already reported have landed."""
        for part in self._pieces(batch):
            await self.inner.read(peer, part)
            if part.total_bytes:
                self._on_bytes(part.total_bytes)

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """As ``read``, for a write: each piece reported once the peer holds its bytes
        (``UnsupportedOperationError`` if the inner transport cannot write)."""
        inner = writable(self.inner)
        for part in self._pieces(batch):
            await inner.write(peer, part)
            if part.total_bytes:
                self._on_bytes(part.total_bytes)

    def _pieces(self, batch: Descriptors) -> tuple[Descriptors, ...]:
        parts = math.ceil(batch.total_bytes / self._step) if self._step else 1
        return batch.split(parts=max(1, parts))

"""``DelegatingTransport``: the base of every transport that wraps another one.

Why a base: metrics, progress and fault injection live in wrappers, not in transports
(a transport stays small), and each wrapper changes one or two operations. Writing the
other eight forwards by hand in every wrapper is how they drift from the contract; here
they are written once, and a wrapper overrides only what it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from hybridxfer.descriptors import Descriptors
from hybridxfer.transport._protocol import (
    MemoryRegion,
    Notification,
    PeerHandle,
    Transport,
    TransportCapabilities,
    writable,
)

__all__ = ["DelegatingTransport"]


class DelegatingTransport:
    """A :class:`~hybridxfer.transport.Transport` that forwards everything to ``inner``.

    Entering and closing it enters and closes ``inner``: the wrapper owns the transport
    it wraps. It is a :class:`~hybridxfer.transport.WritableTransport` whenever ``inner``
    is (``capabilities`` are the inner ones, so ``capabilities.writes`` says which).
    Subclass it and override the operations you change, calling ``super()`` (or
    ``self.inner``) for the bytes themselves::

        class CountingReads(DelegatingTransport):
            reads = 0

            async def read(self, peer, batch):
                self.reads += 1
                await super().read(peer, batch)
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def capabilities(self) -> TransportCapabilities:
        return self.inner.capabilities

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        await self.inner.register(regions)

    def local_metadata(self) -> bytes:
        return self.inner.local_metadata()

    async def connect(self, metadata: bytes) -> PeerHandle:
        return await self.inner.connect(metadata)

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """The inner read. Cancellation leaves what the inner transport leaves."""
        await self.inner.read(peer, batch)

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """The inner write; :class:`~hybridxfer.errors.UnsupportedOperationError` if the
        inner transport cannot write. Cancellation leaves what the inner transport leaves."""
        await writable(self.inner).write(peer, batch)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        await self.inner.notify(peer, message)

    async def next_notification(self) -> Notification:
        return await self.inner.next_notification()

    async def aclose(self) -> None:
        await self.inner.aclose()

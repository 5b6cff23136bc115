"""The transport contract: the few async operations every wire must offer.

A transport moves *byte ranges*; it knows nothing of layouts, layers or TP ranks. The
executor hands it one :class:`ReadBatch` per source rank — columnar ``int64`` arrays of
(src region, src offset, dst region, dst offset, length) — and the transport makes those
bytes appear in local memory, one-sided (NIXL READ) or two-sided (TCP, UCXX: the peer
serves the ranges we ask for). Batching, deadlines, retries, metrics and fault injection
live above this layer, so a new transport stays small.

Lifecycle::

    transport = factory(options)          # from the registry, nothing opened yet
    async with transport:                 # starts background service (listener, progress)
        await transport.register(regions) # local memory others may read / we read into
        meta = transport.local_metadata() # bytes to publish to peers
        peer = await transport.connect(peer_meta)
        await transport.read(peer, batch)             # bytes land in our regions
        await transport.notify(peer, b"req-7:done")   # peer's next_notification() sees it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "MemoryKind",
    "MemoryRegion",
    "Notification",
    "PeerHandle",
    "ReadBatch",
    "Transport",
    "TransportCapabilities",
]

MemoryKind = Literal["host", "cuda"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen
class TransportCapabilities:
    """What a transport can do, so the executor can choose without try/except."""

    memory_kinds: frozenset[MemoryKind] = frozenset({"host"})
    #: True when reads need no cooperation from the peer's CPU (RDMA / NIXL READ).
    one_sided: bool = False
    #: True when ``notify`` / ``next_notification`` work.
    notifications: bool = True
    #: Largest number of descriptors one ``read`` call accepts; the executor splits above it.
    max_descriptors_per_read: int | None = None


@attrs.frozen
class MemoryRegion:
    """One contiguous piece of local memory that a transport registers.

    ``address`` is a raw pointer valid in this process for ``length`` bytes; the owner
    (an :class:`~hybridxfer.execute.Agent`) keeps the backing array alive while registered.
    """

    name: str
    address: int
    length: int
    kind: MemoryKind = "host"
    device: int = 0

    def __attrs_post_init__(self) -> None:
        if self.length < 0:
            raise ValueError(f"region {self.name!r}: negative length {self.length}")
        if self.address <= 0 and self.length > 0:
            raise ValueError(f"region {self.name!r}: null address")


@attrs.frozen(eq=False)
class ReadBatch:
    """Descriptors for one read from one peer, as parallel ``int64`` columns.

    ``src_region`` indexes the *peer's* registered regions (in its registration order, as
    published in its metadata); ``dst_region`` indexes ours. Every row must lie inside its
    regions; transports re-check this on the serving side and refuse the whole batch with no
    byte moved otherwise.
    """

    src_region: Int64Array
    src_offset: Int64Array
    dst_region: Int64Array
    dst_offset: Int64Array
    length: Int64Array

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum()) if len(self) else 0

    @classmethod
    def empty(cls) -> ReadBatch:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, z)

    def slice(self, start: int, stop: int) -> ReadBatch:
        """Rows ``[start, stop)``, sharing memory with this batch."""
        return ReadBatch(
            self.src_region[start:stop],
            self.src_offset[start:stop],
            self.dst_region[start:stop],
            self.dst_offset[start:stop],
            self.length[start:stop],
        )


@attrs.frozen
class Notification:
    """A small message a peer sent with :meth:`Transport.notify`."""

    peer_name: str
    message: bytes


@runtime_checkable
class PeerHandle(Protocol):
    """What :meth:`Transport.connect` returns: an opaque connection to one peer."""

    @property
    def name(self) -> str:
        """The peer's agent name, as it published it in its metadata."""
        ...

    @property
    def region_names(self) -> Sequence[str]:
        """The peer's registered regions, in the order ``ReadBatch.src_region`` indexes."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A wire between agents. See the module docstring for the lifecycle."""

    @property
    def name(self) -> str:
        """The registry name (= URL scheme): ``tcp``, ``nixl``, ``ucxx``, ``loopback``."""
        ...

    @property
    def capabilities(self) -> TransportCapabilities: ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register local memory. May be called more than once; names must be unique."""
        ...

    def local_metadata(self) -> bytes:
        """Bytes a peer passes to :meth:`connect` to reach us (address, region table)."""
        ...

    async def connect(self, metadata: bytes) -> PeerHandle:
        """Connect to the peer described by ``metadata``. Raises :class:`ConnectError`."""
        ...

    async def read(self, peer: PeerHandle, batch: ReadBatch) -> None:
        """Copy every row of ``batch`` from the peer's memory into ours.

        Returns when all bytes have landed. Raises :class:`TransferError` (or a subclass)
        on failure. On cancellation the destination ranges are undefined (possibly partly
        written) and the transport remains usable for other reads.
        """
        ...

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Deliver ``message`` to the peer exactly once (after preceding reads completed)."""
        ...

    async def next_notification(self) -> Notification:
        """Wait for the next notification any peer sent us."""
        ...

    async def aclose(self) -> None:
        """Release everything. Idempotent: a second call does nothing."""
        ...

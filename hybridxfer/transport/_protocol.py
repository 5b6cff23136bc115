"""The transport contract: the few async operations every wire must offer.

A transport moves *byte ranges*; it knows nothing of layouts, layers or TP ranks. The
executor hands it :class:`~hybridxfer.descriptors.Descriptors` — the plan's own columnar
``int64`` rows of (src region, src offset, dst region, dst offset, length), already
coalesced, mapped onto the peer's and our registration order and split at
``max_descriptors_per_read`` — and the transport makes those bytes appear in local memory,
one-sided (NIXL READ) or two-sided (TCP, UCXX: the peer serves the ranges we ask for). It
checks them with :func:`~hybridxfer.descriptors.check_bounds` and moves them as they are.
Batching, deadlines, retries, metrics and fault injection live above this layer, so a new
transport stays small.

Lifecycle::

    transport = factory(options)          # from the registry, nothing opened yet
    async with transport:                 # starts background service (listener, progress)
        await transport.register(regions) # local memory others may read / we read into
        meta = transport.local_metadata() # bytes to publish to peers
        peer = await transport.connect(peer_meta)
        await transport.read(peer, descriptors)       # bytes land in our regions
        await transport.notify(peer, b"req-7:done")   # peer's next_notification() sees it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import attrs

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import RegistrationError

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


@attrs.frozen
class TransportCapabilities:
    """What a transport can do, so the executor can choose without try/except."""

    memory_kinds: frozenset[MemoryKind] = frozenset({"host"})
    #: True when reads need no cooperation from the peer's CPU (RDMA / NIXL READ).
    one_sided: bool = False
    #: True when ``notify`` / ``next_notification`` work.
    notifications: bool = True
    #: Largest number of descriptors one ``read`` call accepts; the executor splits above it
    #: (``None``: any number).
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
            raise RegistrationError(f"region {self.name!r}: negative length {self.length}")
        if self.address <= 0 and self.length > 0:
            raise RegistrationError(f"region {self.name!r}: null address")


#: The name transports used for :class:`~hybridxfer.descriptors.Descriptors` before it
#: was the one descriptor type of planner and wire; kept so existing transports still import.
ReadBatch = Descriptors


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
        """The peer's registered regions, in the order ``Descriptors.src_region`` indexes."""
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
        """Register local memory. May be called more than once; names must be unique.

        Raises :class:`~hybridxfer.errors.RegistrationError` for a name registered twice
        or memory of a kind not in ``capabilities.memory_kinds``.
        """
        ...

    def local_metadata(self) -> bytes:
        """Bytes a peer passes to :meth:`connect` to reach us (address, region table)."""
        ...

    async def connect(self, metadata: bytes) -> PeerHandle:
        """Connect to the peer described by ``metadata``. Raises :class:`ConnectError`."""
        ...

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Copy every row of ``batch`` from the peer's memory into ours.

        ``src_region`` indexes the *peer's* regions (``peer.region_names`` order),
        ``dst_region`` ours (registration order); ``src_rank`` is not used. Every row
        must lie inside its regions: one that does not refuses the whole read
        (:func:`~hybridxfer.descriptors.check_bounds`) with no byte moved — on the
        serving side too, for two-sided transports.

        Returns when all bytes have landed. Raises :class:`TransferError` (or a subclass,
        e.g. :class:`TransferTimeout`) on failure, :class:`ConnectError` when the peer
        cannot be reached, :class:`BrokenTransportError` when the connection died,
        :class:`ProtocolError` for a malformed reply and :class:`ClosedTransportError`
        after ``aclose()``, each with the native error as ``__cause__``. On cancellation the destination ranges are
        undefined (possibly partly written) and the transport remains usable for other
        reads.
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

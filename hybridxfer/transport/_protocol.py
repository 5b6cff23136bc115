"""The transport contract: the few async operations every wire must offer.

A transport moves *byte ranges*; it knows nothing of layouts, layers or TP ranks. The
executor hands it :class:`~hybridxfer.descriptors.Descriptors` — the plan's own columnar
``int64`` rows of (src region, src offset, dst region, dst offset, length), already
coalesced, mapped onto the peer's and our registration order and split at
``max_descriptors_per_read`` — and the transport makes those bytes appear in local memory,
one-sided (NIXL READ) or two-sided (TCP, UCXX: the peer serves the ranges we ask for). It
checks them with :func:`~hybridxfer.descriptors.check_bounds` and moves them as they are.
A transport whose ``capabilities.writes`` is true is also a :class:`WritableTransport`: it
can *push* rows of its own memory into a peer's (``write``), which is how a prefill
worker streams finished layers straight into a decode worker's cache.
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
        await writable(transport).write(peer, rows)   # push: our bytes land in the peer's regions

Why ``write`` is a separate protocol: a transport written before writes existed is still a
complete :class:`Transport`; a caller checks ``capabilities.writes`` (or calls
:func:`writable`, which raises :class:`~hybridxfer.errors.UnsupportedOperationError`) and
falls back to reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import attrs

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import RegistrationError, UnsupportedOperationError

__all__ = [
    "MemoryKind",
    "MemoryRegion",
    "Notification",
    "PeerHandle",
    "ReadBatch",
    "Transport",
    "TransportCapabilities",
    "WritableTransport",
    "writable",
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
    #: True when ``write`` works (the transport is a :class:`WritableTransport`); the
    #: executor splits writes at ``max_descriptors_per_read`` too.
    writes: bool = False


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


@runtime_checkable
class WritableTransport(Transport, Protocol):
    """A :class:`Transport` that can also push bytes into a peer's memory."""

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Copy every row of ``batch`` from our memory into the peer's.

        The mirror of :meth:`Transport.read`: ``src_region`` indexes *our* regions
        (registration order), ``dst_region`` the *peer's* (``peer.region_names`` order);
        ``src_rank`` is not used. Every row must lie inside its regions: one that does not
        refuses the whole write (:func:`~hybridxfer.descriptors.check_bounds`) with no
        byte moved — on the receiving side too, for two-sided transports, which never
        write into memory they did not register.

        Returns when every byte is in the peer's memory (the peer acknowledged, or the
        one-sided WRITE completed). Raises the same classes as ``read``:
        :class:`TransferError` (refused or failed), :class:`TransferTimeout`,
        :class:`ConnectError`, :class:`BrokenTransportError`, :class:`ProtocolError`,
        :class:`ClosedTransportError` after ``aclose()``, with the native error as
        ``__cause__``. On cancellation the peer's destination ranges are undefined
        (possibly partly written) and the transport remains usable.
        """
        ...


def writable(transport: Transport) -> WritableTransport:
    """``transport`` as a :class:`WritableTransport`, or a typed refusal.

    Raises :class:`~hybridxfer.errors.UnsupportedOperationError` (naming the transport)
    when ``capabilities.writes`` is false or it has no ``write``: push mode then falls
    back to reads, never to a silent no-op.
    """
    if not transport.capabilities.writes or not isinstance(transport, WritableTransport):
        raise UnsupportedOperationError(
            f"transport {transport.name!r} does not support writes (capabilities.writes is false); "
            "use reads (pull mode) with it")
    return transport

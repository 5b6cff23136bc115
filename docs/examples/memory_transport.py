"""A complete, minimal hybridxfer transport: peers are other ``MemoryTransport``s in
this process, and a read is the shared bounds check plus a numpy copy per row.

It is the example of ``docs/writing-a-transport.md`` and passes the in-process
conformance suite (``tests/docs/test_example_transport.py`` runs it). A real transport
replaces the three marked places: what ``local_metadata`` publishes, how ``connect``
reaches the peer, and how ``read`` moves the bytes.
"""

from __future__ import annotations

import ctypes
import json
import math
import secrets
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.errors import (
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
)
from hybridxfer.transport import (
    Descriptors,
    MemoryRegion,
    Notification,
    PeerHandle,
    TransportCapabilities,
    check_bounds,
)

__all__ = ["MemoryPeer", "MemoryTransport"]

U8 = npt.NDArray[np.uint8]
_ROWS_PER_CHECKPOINT = 1024  # a huge batch must stay cancellable

# Open transports of this process, by the random token in their metadata.
_OPEN: dict[str, MemoryTransport] = {}


class MemoryPeer:
    """What ``connect`` returns: the peer's name and region order (the PeerHandle protocol)."""

    def __init__(self, target: MemoryTransport) -> None:
        self.target = target

    @property
    def name(self) -> str:
        return self.target.agent_name

    @property
    def region_names(self) -> Sequence[str]:
        return [r.name for r in self.target.regions]


class MemoryTransport:
    """In-process transport. Options: ``name`` (the agent name peers see)."""

    def __init__(self, *, name: str = "memory-agent") -> None:
        self.agent_name = name
        self.regions: list[MemoryRegion] = []
        self._views: list[U8] = []
        self._token = secrets.token_hex(8)
        self._closed = False
        self._send: MemoryObjectSendStream[Notification] | None = None
        self._receive: MemoryObjectReceiveStream[Notification] | None = None

    @property
    def name(self) -> str:
        return "memory"

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(memory_kinds=frozenset({"host"}), one_sided=True, notifications=True)

    async def __aenter__(self) -> MemoryTransport:
        self._check_open()
        self._send, self._receive = anyio.create_memory_object_stream[Notification](math.inf)
        _OPEN[self._token] = self
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedTransportError(f"memory transport {self.agent_name!r} is closed")

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        self._check_open()
        for region in regions:
            if region.kind != "host":
                raise RegistrationError(f"memory transport handles host memory only, not {region.kind}")
            if any(r.name == region.name for r in self.regions):
                raise RegistrationError(f"region {region.name!r} is already registered")
            raw = (ctypes.c_uint8 * region.length).from_address(region.address)
            self._views.append(np.ctypeslib.as_array(raw))
            self.regions.append(region)
        await anyio.lowlevel.checkpoint()

    def local_metadata(self) -> bytes:
        # (1) A real transport publishes its address here (host:port, a NIXL agent blob).
        self._check_open()
        return json.dumps({"v": 1, "name": self.agent_name, "token": self._token}).encode()

    async def connect(self, metadata: bytes) -> MemoryPeer:
        # (2) A real transport opens a connection here; anything malformed is a ConnectError.
        self._check_open()
        try:
            doc = json.loads(metadata)
            token = doc["token"] if doc.get("v") == 1 else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConnectError(f"not memory-transport metadata: {exc}") from exc
        target = _OPEN.get(token) if isinstance(token, str) else None
        if target is None:
            raise ConnectError("no open memory transport for that metadata")
        await anyio.lowlevel.checkpoint()
        return MemoryPeer(target)

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Copy every row from the peer into our regions.

        Every row is checked first (``check_bounds``, the check every transport shares);
        one bad row refuses the whole batch with ``TransferError``, nothing copied.
        Cancellation: rows before the last checkpoint are copied, later ones are not
        (the destination is undefined); the transport stays usable.
        """
        self._check_open()
        if not isinstance(peer, MemoryPeer):
            raise TypeError(f"not a memory-transport peer: {peer!r}")
        target = peer.target
        if target._closed:
            raise TransferError(f"peer {target.agent_name!r} is closed")
        check_bounds(batch, src_lengths=[r.length for r in target.regions],
                     dst_lengths=[r.length for r in self.regions])
        # (3) A real transport posts the rows to its wire here.
        rows = zip(batch.src_region.tolist(), batch.src_offset.tolist(), batch.dst_region.tolist(),
                   batch.dst_offset.tolist(), batch.length.tolist(), strict=True)
        for i, (sr, so, dr, do, n) in enumerate(rows):
            self._views[dr][do:do + n] = target._views[sr][so:so + n]
            if i % _ROWS_PER_CHECKPOINT == _ROWS_PER_CHECKPOINT - 1:
                await anyio.lowlevel.checkpoint()
                if target._closed:
                    raise TransferError(f"peer {target.agent_name!r} closed mid-read")
        await anyio.lowlevel.checkpoint()

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        self._check_open()
        if not isinstance(peer, MemoryPeer):
            raise TypeError(f"not a memory-transport peer: {peer!r}")
        await anyio.lowlevel.checkpoint()
        send = peer.target._send
        if peer.target._closed or send is None:
            raise TransferError(f"peer {peer.target.agent_name!r} is closed")
        send.send_nowait(Notification(self.agent_name, bytes(message)))

    async def next_notification(self) -> Notification:
        self._check_open()
        if self._receive is None:
            raise NotStartedError("memory transport was never entered")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedTransportError(f"memory transport {self.agent_name!r} is closed") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        _OPEN.pop(self._token, None)
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()
        await anyio.lowlevel.checkpoint()


"""The in-process reference transport: peers are other agents in this process.

Why it exists: it is the simplest correct implementation of the contract — a bounds
check and a ``memmove`` — so the conformance suite is checked against it first, and
tests of the executor need no sockets. Agents find each other through a process-global
table keyed by a random token carried in the metadata, so two event loops' worth of
names never collide and a closed transport cannot be reached any more.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import secrets
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
import numpy as np

from hybridxfer.descriptors import Descriptors, check_bounds
from hybridxfer.errors import (
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
)
from hybridxfer.transport._protocol import MemoryRegion, Notification, PeerHandle, TransportCapabilities

__all__ = ["LoopbackPeer", "LoopbackTransport"]

log = logging.getLogger(__name__)

_METADATA_VERSION = 1
# Rows copied between checkpoints, so a huge plan stays cancellable and fair to other tasks.
_ROWS_PER_CHECKPOINT = 4096
_BYTES_PER_CHECKPOINT = 64 << 20

_agents: dict[str, LoopbackTransport] = {}


class LoopbackPeer:
    """A connection to another loopback transport in this process."""

    def __init__(self, target: LoopbackTransport) -> None:
        self._target = target

    @property
    def name(self) -> str:
        return self._target.agent_name

    @property
    def region_names(self) -> Sequence[str]:
        return tuple(r.name for r in self._target.regions)

    @property
    def target(self) -> LoopbackTransport:
        return self._target


class LoopbackTransport:
    """Reference transport for agents living in one process (one-sided memcpy, reads and writes)."""

    def __init__(self, *, name: str = "loopback-agent", **_ignored: object) -> None:
        self.agent_name = name
        self._token = secrets.token_hex(16)
        self._regions: list[MemoryRegion] = []
        self._closed = False
        # Created on entry: an unentered transport owns nothing that needs closing.
        self._send: MemoryObjectSendStream[Notification] | None = None
        self._receive: MemoryObjectReceiveStream[Notification] | None = None

    @property
    def name(self) -> str:
        return "loopback"

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(
            memory_kinds=frozenset({"host"}), one_sided=True, notifications=True, writes=True
        )

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    async def __aenter__(self) -> LoopbackTransport:
        self._check_open()
        self._send, self._receive = anyio.create_memory_object_stream[Notification](math.inf)
        _agents[self._token] = self
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedTransportError(f"loopback transport {self.agent_name!r} is closed")

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Add regions (host memory only). Nothing is copied; the caller keeps them alive."""
        self._check_open()
        names = {r.name for r in self._regions}
        for region in regions:
            if region.kind != "host":
                raise RegistrationError(f"loopback transport only handles host memory, not {region.kind}")
            if region.name in names:
                raise RegistrationError(f"region {region.name!r} is already registered")
            names.add(region.name)
        self._regions.extend(regions)

    def local_metadata(self) -> bytes:
        self._check_open()
        doc = {
            "v": _METADATA_VERSION,
            "transport": "loopback",
            "name": self.agent_name,
            "token": self._token,
        }
        return json.dumps(doc, sort_keys=True).encode()

    async def connect(self, metadata: bytes) -> LoopbackPeer:
        self._check_open()
        try:
            doc = json.loads(metadata)
            token = doc["token"] if doc.get("v") == _METADATA_VERSION else None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConnectError(f"malformed loopback metadata: {exc}") from exc
        target = _agents.get(token) if isinstance(token, str) else None
        if target is None or target._closed:
            raise ConnectError(f"no open loopback agent for metadata of {doc.get('name')!r}")
        await anyio.lowlevel.checkpoint()
        return LoopbackPeer(target)

    def _peer_target(self, peer: PeerHandle) -> LoopbackTransport:
        if not isinstance(peer, LoopbackPeer):
            raise TypeError(f"not a loopback peer: {peer!r}")
        target = peer.target
        if target._closed:
            raise TransferError(f"loopback peer {target.agent_name!r} is closed")
        return target

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Copy the batch's ranges from the peer's regions into ours.

        Every row is checked against both sides' registrations first; any bad row refuses
        the whole batch with nothing copied. On cancellation, rows copied before the
        last checkpoint are written and later ones are not (destination undefined);
        the transport stays usable.
        """
        self._check_open()
        target = self._peer_target(peer)
        await _copy(batch, target.regions, self.regions, target, "read from")

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Copy the batch's ranges from our regions into the peer's (the mirror of ``read``).

        ``src_region`` indexes our regions, ``dst_region`` the peer's. Checked like a
        read, nothing copied on refusal; cancellation leaves the peer's destination
        undefined, the transport usable.
        """
        self._check_open()
        target = self._peer_target(peer)
        await _copy(batch, self.regions, target.regions, target, "write to")

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Queue ``message`` for the peer. Cancellation before the send leaves nothing queued."""
        self._check_open()
        target = self._peer_target(peer)
        await anyio.lowlevel.checkpoint()
        if target._send is None:
            raise TransferError(f"loopback peer {target.agent_name!r} is not open")
        try:
            target._send.send_nowait(Notification(self.agent_name, bytes(message)))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise TransferError(f"loopback peer {target.agent_name!r} is closed") from exc

    async def next_notification(self) -> Notification:
        """Wait for the next notification. Cancellation consumes nothing."""
        self._check_open()
        if self._receive is None:
            raise NotStartedError(f"loopback transport {self.agent_name!r} was never entered")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedTransportError(f"loopback transport {self.agent_name!r} is closed") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        _agents.pop(self._token, None)
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()
        await anyio.lowlevel.checkpoint()


async def _copy(batch: Descriptors, src_regions: Sequence[MemoryRegion], dst_regions: Sequence[MemoryRegion],
                target: LoopbackTransport, what: str) -> None:
    """Bounds-check every row, then ``memmove`` them with checkpoints (a read or a write)."""
    try:
        check_bounds(batch, src_lengths=[r.length for r in src_regions], operation=what.split()[0],
                     dst_lengths=[r.length for r in dst_regions])
    except TransferError as exc:
        log.warning("loopback: refused %s %s: %s", what, target.agent_name, exc)
        raise
    if len(batch) == 0:
        await anyio.lowlevel.checkpoint()
        return
    src_base = np.array([r.address for r in src_regions], dtype=np.int64)
    dst_base = np.array([r.address for r in dst_regions], dtype=np.int64)
    src_addr = (src_base[batch.src_region] + batch.src_offset).tolist()
    dst_addr = (dst_base[batch.dst_region] + batch.dst_offset).tolist()
    lengths = batch.length.tolist()
    since = 0
    for i, (d, s, n) in enumerate(zip(dst_addr, src_addr, lengths, strict=True)):
        ctypes.memmove(d, s, n)
        since += n
        if since >= _BYTES_PER_CHECKPOINT or i % _ROWS_PER_CHECKPOINT == _ROWS_PER_CHECKPOINT - 1:
            since = 0
            await anyio.lowlevel.checkpoint()
            if target._closed:
                raise TransferError(f"loopback peer {target.agent_name!r} closed mid-{what.split()[0]}")
    await anyio.lowlevel.checkpoint()

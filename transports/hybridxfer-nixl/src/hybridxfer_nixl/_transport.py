"""``NixlTransport``: one-sided NIXL READ and WRITE behind the hybridxfer transport contract.

Every NIXL call runs on one private thread (:mod:`._worker`); this module only checks
arguments, builds numpy descriptor arrays and waits, so the event loop never blocks.

Descriptor strategy (measured here, 256 MiB READ, 2 cores): our rows are arbitrary
(region, offset, length) triples that change per request, so a dlist prepared per
(peer, region) cannot address them by index. Per request we therefore build ``N×3``
numpy arrays and call ``initialize_xfer`` — 0.4 ms for 10k descriptors and ~9 ms for
100k, against 1.0 ms / 16 ms for ``prep_xfer_dlist`` ×2 + ``make_prepped_xfer`` with
``np.int32`` indices over the same rows. Contiguous rows were already coalesced by the
planner, so NIXL's prepped-path merging has nothing left to merge.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from typing import Literal

import anyio
import anyio.lowlevel
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
    TransportError,
)
from hybridxfer.transport import (
    Descriptors,
    LoopWaker,
    MemoryRegion,
    Notification,
    PeerHandle,
    TransportCapabilities,
    wait_future,
)

from hybridxfer_nixl._cuda import cuda_available
from hybridxfer_nixl._descs import RegionTable, build_descriptors
from hybridxfer_nixl._envelope import RegionEntry, decode, encode
from hybridxfer_nixl._peer import NixlPeer
from hybridxfer_nixl._worker import NixlWorker

__all__ = ["NixlTransport"]

_NIXL_MEM = {"host": "DRAM", "cuda": "VRAM"}


class NixlTransport:
    """NIXL (UCX backend) READ/WRITE transport; host memory everywhere, CUDA memory with a GPU.

    ``progress_thread=False`` (default) disables NIXL's own progress thread: our worker
    thread drives progress, measured 1.5–2× faster on small CPU budgets. ``read_timeout``
    is the per-READ (and per-WRITE) deadline after which the handle is released and
    :class:`~hybridxfer.errors.TransferTimeout` raised — a stalled (not dead) peer never
    produces a NIXL error by itself. ``cancel_grace`` bounds how long a cancelled read
    waits for NIXL to confirm the handle was released.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        agent_name: str | None = None,
        progress_thread: bool = False,
        read_timeout: float | None = 60.0,
        cancel_grace: float = 1.0,
    ) -> None:
        # ``name`` is what peers see as ``Notification.peer_name``; unnamed agents get a
        # unique one because NIXL refuses two connected agents with the same name.
        self._agent_name = agent_name or name or f"hx-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._progress_thread = progress_thread
        self._read_timeout = read_timeout
        self._cancel_grace = cancel_grace
        self._entries: list[RegionEntry] = []
        self._table = RegionTable.from_entries([])
        self._registered: set[tuple[str, int, int, int]] = set()
        self._peers: dict[str, NixlPeer] = {}
        self._metadata = b""
        self._worker: NixlWorker | None = None
        self._caller: LoopWaker | None = None
        self._closed = False
        self._notes_in: MemoryObjectSendStream[Notification] | None = None
        self._notes_out: MemoryObjectReceiveStream[Notification] | None = None

    # -- contract: identity and lifecycle -----------------------------------------------

    @property
    def name(self) -> str:
        return "nixl"

    @property
    def agent_name(self) -> str:
        """The NIXL agent name peers see (``Notification.peer_name``, ``PeerHandle.name``)."""
        return self._agent_name

    @property
    def capabilities(self) -> TransportCapabilities:
        kinds: frozenset[str] = frozenset({"host", "cuda"} if cuda_available() else {"host"})
        return TransportCapabilities(
            memory_kinds=kinds,  # type: ignore[arg-type]
            one_sided=True,
            notifications=True,
            max_descriptors_per_read=None,
            writes=True,
        )

    async def __aenter__(self) -> NixlTransport:
        if self._closed:
            raise ClosedTransportError("NIXL transport already closed")
        if self._worker is not None:
            raise TransportError("NIXL transport entered twice")
        self._caller = LoopWaker()
        self._notes_in, self._notes_out = anyio.create_memory_object_stream[Notification](math.inf)
        self._worker = NixlWorker(
            self._agent_name,
            progress_thread=self._progress_thread,
            on_notifications=self._on_notifications,
        )
        try:
            await wait_future(self._caller, self._worker.start())
            self._metadata = await self._publish()
        except Exception as exc:
            await self.aclose()
            raise ConnectError(f"could not create NIXL agent: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the worker thread, releasing in-flight handles and the agent. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._notes_in is not None and self._notes_out is not None:
            self._notes_in.close()
            self._notes_out.close()
        if self._worker is not None and self._caller is not None:
            with anyio.CancelScope(shield=True):
                await wait_future(self._caller, self._worker.stop())
        self._peers.clear()

    # -- contract: memory and metadata ----------------------------------------------------

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register regions; the same memory range is handed to NIXL only once."""
        worker, caller = self._running()
        names = {e.name for e in self._entries}
        for region in regions:
            if region.name in names:
                raise RegistrationError(f"region {region.name!r} is already registered")
            names.add(region.name)
        fresh: dict[str, list[tuple[int, int, int]]] = {}
        seen = set(self._registered)
        for region in regions:
            key = (region.kind, region.device, region.address, region.length)
            if region.length > 0 and key not in seen:
                seen.add(key)
                fresh.setdefault(_NIXL_MEM[region.kind], []).append(
                    (region.address, region.length, region.device)
                )

        def register_all(agent: object) -> None:
            for mem, rows in fresh.items():
                agent.register_memory(np.array(rows, dtype=np.uint64), mem)  # type: ignore[attr-defined]

        try:
            await wait_future(caller, worker.call(register_all))
        except Exception as exc:
            raise RegistrationError(f"NIXL could not register memory: {exc}") from exc
        self._registered = seen
        self._entries.extend(
            RegionEntry(r.name, r.address, r.length, r.kind, r.device) for r in regions
        )
        self._table = RegionTable.from_entries(self._entries)
        self._metadata = await self._publish()

    def local_metadata(self) -> bytes:
        """Our envelope: region table + NIXL agent metadata (refreshed by ``register``)."""
        self._running()
        return self._metadata

    async def _publish(self) -> bytes:
        worker, caller = self._running()
        blob = await wait_future(caller, worker.call(lambda agent: agent.get_agent_metadata()))
        return encode(self._agent_name, self._entries, bytes(blob))

    # -- contract: peers -------------------------------------------------------------------

    async def connect(self, metadata: bytes) -> NixlPeer:
        """Load a peer's NIXL metadata. NIXL connects lazily, on the first READ."""
        worker, caller = self._running()
        try:
            envelope = decode(metadata)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectError(f"bad NIXL peer metadata: {exc}") from exc
        known = self._peers.get(envelope.agent_name)
        if known is not None and known.metadata == metadata:
            return known
        own = envelope.agent_name == self._agent_name

        def load(agent: object) -> None:
            if own:
                return  # NIXL reads from itself through its loopback path
            if known is not None:
                agent.remove_remote_agent(envelope.agent_name)  # type: ignore[attr-defined]
            agent.add_remote_agent(envelope.nixl_metadata)  # type: ignore[attr-defined]

        try:
            await wait_future(caller, worker.call(load))
        except Exception as exc:
            raise ConnectError(f"NIXL could not load peer {envelope.agent_name!r}: {exc}") from exc
        peer = NixlPeer(envelope.agent_name, RegionTable.from_entries(envelope.regions), metadata)
        self._peers[peer.name] = peer
        return peer

    def _peer(self, peer: PeerHandle) -> NixlPeer:
        if not isinstance(peer, NixlPeer) or self._peers.get(peer.name) is not peer:
            raise TransferError(f"peer {peer.name!r} was not connected through this transport")
        return peer

    # -- contract: data and notifications ---------------------------------------------------

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """READ every row of ``batch`` from ``peer`` into our regions, one-sided.

        Cancellation (or our own ``read_timeout``) releases the NIXL handle, which cancels
        the READ; we wait up to ``cancel_grace`` seconds for NIXL to confirm, so when this
        returns NIXL normally no longer writes into the destination. The destination
        ranges are undefined (possibly partly written); the transport stays usable.
        """
        await self._transfer(peer, batch, "READ")

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """WRITE every row of ``batch`` from our regions into ``peer``'s, one-sided.

        ``src_region`` indexes our regions, ``dst_region`` the peer's (as its metadata
        published them at ``connect``). Returns when NIXL reports the WRITE complete.
        Timeout and cancellation as for ``read``: the handle is released, the peer's
        destination ranges are undefined, the transport stays usable.
        """
        await self._transfer(peer, batch, "WRITE")

    async def _transfer(self, peer: PeerHandle, batch: Descriptors, operation: Literal["READ", "WRITE"]) -> None:
        worker, caller = self._running()
        nixl_peer = self._peer(peer)
        descs = build_descriptors(batch, self._table, nixl_peer.table, operation)
        if len(descs) == 0:
            await anyio.lowlevel.checkpoint()
            return
        job = worker.start_read(descs, nixl_peer.name, self._read_timeout, operation)
        try:
            await wait_future(caller, job.future)
        except anyio.get_cancelled_exc_class():
            worker.cancel(job)
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._cancel_grace):
                try:
                    await wait_future(caller, job.future)
                except TransferError:
                    pass
            raise

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Send ``message`` as a NIXL notification; the peer sees it once.

        Cancellation may leave the notification sent or not sent.
        """
        worker, caller = self._running()
        nixl_peer = self._peer(peer)
        payload = bytes(message)
        try:
            await wait_future(caller, worker.call(lambda agent: agent.send_notif(nixl_peer.name, payload)))
        except Exception as exc:
            raise BrokenTransportError(f"NIXL notification to {nixl_peer.name!r} failed: {exc}") from exc

    async def next_notification(self) -> Notification:
        """Wait for the next notification. Cancellation loses nothing."""
        self._running()
        assert self._notes_out is not None
        try:
            return await self._notes_out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedTransportError("NIXL transport closed") from exc

    def _on_notifications(self, batch: list[tuple[str, bytes]]) -> None:
        """Called on the worker thread; hops to the loop before touching the stream."""
        sink = self._notes_in
        caller = self._caller
        if sink is None or caller is None:
            return

        def deliver() -> None:
            for sender, message in batch:
                try:
                    sink.send_nowait(Notification(sender, message))
                except anyio.ClosedResourceError:
                    return

        caller.call_soon(deliver)

    def _running(self) -> tuple[NixlWorker, LoopWaker]:
        if self._closed:
            raise ClosedTransportError("NIXL transport is closed")
        if self._worker is None or self._caller is None:
            raise NotStartedError("use the NIXL transport inside 'async with'")
        return self._worker, self._caller

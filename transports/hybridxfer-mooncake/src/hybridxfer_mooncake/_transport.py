"""``MooncakeTransport``: Mooncake Transfer Engine (TCP) behind the hybridxfer contract.

Each transport runs one *serving* engine, which registers the caller's regions and a
16-byte identity token and answers peers' one-sided READs, and one *reading* engine per
connected peer (:mod:`._link`), which reads into staging slabs that are copied out to
the caller's memory on the event loop. The split is what makes abandoning a call safe:
the serving engine never runs a call that can hang, so ``aclose`` destroys it at once
and nothing reads the caller's memory after it returns; a reading engine only ever
writes slabs it owns, which outlive every call that may still write them.

Notifications ride on Mooncake's own: a 16-byte READ of the peer's identity block that
carries a ``TransferNotify`` (sender agent name, message as hex), which the peer's
serving engine queues for ``get_notifies`` — polled by :meth:`next_notification`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.transport import (
    Descriptors,
    LoopWaker,
    MemoryRegion,
    Notification,
    PeerHandle,
    TransportCapabilities,
    check_bounds,
    wait_future,
)

from hybridxfer_mooncake._envelope import TOKEN_BYTES, Envelope, RegionEntry, decode, encode
from hybridxfer_mooncake._link import PeerLink
from hybridxfer_mooncake._native import check, new_engine, notify_read, read_rows
from hybridxfer_mooncake._peer import MooncakePeer
from hybridxfer_mooncake._stage import EngineBatch, copy_out, engine_batches

__all__ = ["MAX_BATCH_ENTRIES", "MooncakeTransport"]

U8 = npt.NDArray[np.uint8]

#: Entries one engine call may carry: the engine's per-peer lane queue (measured: a
#: batch of 2049..4096 entries fails with "TCP lane queue-full").
MAX_BATCH_ENTRIES = 1024


def _view(address: int, length: int) -> U8:
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(address))


@attrs.define(eq=False)
class _PeerState:
    """The current reading link of one peer; the lock makes reads to it take turns."""

    link: PeerLink | None = None
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)


class MooncakeTransport:
    """Mooncake TCP transport: one-sided READ of host memory, P2P handshake, no etcd.

    Options: ``host`` — the address this engine advertises and (unless
    ``MC_TCP_BIND_ADDRESS`` is set) binds; ``staging_bytes`` and ``staging_buffers`` —
    size and count of the slabs each peer's reads land in (two let one slab be copied
    out while the engine fills the other); ``max_batch_entries`` — entries per engine
    call (1..1024); ``call_timeout`` — deadline for ``connect`` and ``notify``, the two
    engine calls the executor puts no deadline on (reads are bounded by the caller's
    deadline, and by the engine itself after 30 s without progress);
    ``notification_poll`` — seconds between ``get_notifies`` polls while someone waits.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        agent_name: str | None = None,
        host: str = "127.0.0.1",
        staging_bytes: int = 32 << 20,
        staging_buffers: int = 2,
        max_batch_entries: int = MAX_BATCH_ENTRIES,
        call_timeout: float = 10.0,
        notification_poll: float = 0.002,
    ) -> None:
        if not 1 <= max_batch_entries <= MAX_BATCH_ENTRIES:
            raise ValueError(f"max_batch_entries must be 1..{MAX_BATCH_ENTRIES}, not {max_batch_entries}")
        if staging_bytes < 4096 or staging_buffers < 1:
            raise ValueError("staging_bytes must be >= 4096 and staging_buffers >= 1")
        self._agent_name = agent_name or name or f"hx-mooncake-{uuid.uuid4().hex[:8]}"
        self._host = host
        self._slab_bytes = staging_bytes
        self._slab_count = staging_buffers
        self._max_entries = max_batch_entries
        self._call_timeout = call_timeout
        self._poll = notification_poll
        self._token = secrets.token_bytes(TOKEN_BYTES)
        self._identity = np.zeros(4096, dtype=np.uint8)
        self._identity[:TOKEN_BYTES] = np.frombuffer(self._token, dtype=np.uint8)
        self._server: Any = None
        self._rpc_port = 0
        self._waker: LoopWaker | None = None
        self._entries: list[RegionEntry] = []
        self._views: list[U8] = []
        self._lengths = np.zeros(0, dtype=np.int64)
        self._registered: set[tuple[int, int]] = set()
        self._peers: dict[bytes, MooncakePeer] = {}
        self._states: dict[bytes, _PeerState] = {}
        self._notes: collections.deque[Notification] = collections.deque()
        self._started = False
        self._closed = False

    # -- identity and lifecycle ---------------------------------------------------------

    @property
    def name(self) -> str:
        return "mooncake"

    @property
    def agent_name(self) -> str:
        """The name peers see (``Notification.peer_name``, ``PeerHandle.name``)."""
        return self._agent_name

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(memory_kinds=frozenset({"host"}), one_sided=True, notifications=True,
                                     max_descriptors_per_read=None)

    async def __aenter__(self) -> MooncakeTransport:
        if self._closed:
            raise ClosedTransportError("Mooncake transport already closed")
        if self._started:
            raise RuntimeError("Mooncake transport entered twice")
        self._waker = LoopWaker()
        identity = self._identity

        def start() -> tuple[Any, int]:
            engine = new_engine(self._host)
            check("register_memory", engine.register_memory(int(identity.ctypes.data), int(identity.nbytes)),
                  self._host)
            return engine, int(engine.get_rpc_port())

        try:
            self._server, self._rpc_port = await anyio.to_thread.run_sync(start)
        except Exception as exc:
            self._closed = True
            raise ConnectError(f"could not start a Mooncake engine on {self._host}: {exc}") from exc
        self._started = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and retire every reading engine. Idempotent.

        The serving engine is destroyed before this returns, so no peer reads our
        regions afterwards. Each reading engine is destroyed by its own thread once its
        queued calls returned (about a second: the engine closes its lanes); it writes
        only its own slabs, so nothing waits for it here.
        """
        if self._closed:
            return
        self._closed = True
        for state in self._states.values():
            self._retire(state)
        server, self._server = [self._server], None
        with anyio.CancelScope(shield=True):
            if server[0] is not None:
                await anyio.to_thread.run_sync(server.clear)  # the destructor runs off the loop
        self._peers.clear()
        self._states.clear()

    def _running(self) -> None:
        if self._closed:
            raise ClosedTransportError("Mooncake transport is closed")
        if not self._started:
            raise NotStartedError("use the Mooncake transport inside 'async with'")

    def _loop_waker(self) -> LoopWaker:
        assert self._waker is not None
        return self._waker

    # -- memory and metadata ---------------------------------------------------------------

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register host regions with the serving engine; the same range only once."""
        self._running()
        names = {e.name for e in self._entries}
        fresh: list[tuple[int, int]] = []
        for region in regions:
            if region.kind != "host":
                raise RegistrationError(f"region {region.name!r}: the Mooncake transport moves host memory only, "
                                        f"not {region.kind}")
            if region.name in names:
                raise RegistrationError(f"region {region.name!r} is already registered")
            names.add(region.name)
            key = (region.address, region.length)
            if region.length > 0 and key not in self._registered and key not in fresh:
                fresh.append(key)
        server = self._server

        def register_all() -> None:
            for address, length in fresh:
                check("register_memory", server.register_memory(address, length), self._host)

        try:
            await anyio.to_thread.run_sync(register_all)
        except Exception as exc:
            raise RegistrationError(f"Mooncake could not register memory: {exc}") from exc
        self._registered.update(fresh)
        for region in regions:
            self._entries.append(RegionEntry(region.name, region.address, region.length))
            self._views.append(_view(region.address, region.length) if region.length
                               else np.zeros(0, dtype=np.uint8))
        self._lengths = np.array([e.length for e in self._entries], dtype=np.int64)

    def local_metadata(self) -> bytes:
        """Our envelope: engine address, identity token, region table."""
        self._running()
        return encode(Envelope(self._agent_name, self._host, self._rpc_port, self._token,
                               int(self._identity.ctypes.data), tuple(self._entries)))

    # -- peers -------------------------------------------------------------------------------

    async def connect(self, metadata: bytes) -> MooncakePeer:
        """Reach the peer and read its identity token (within ``call_timeout``).

        Raises :class:`ConnectError` for bad metadata, an unreachable peer, or a
        process at that address that is not the one which published the metadata.
        """
        self._running()
        try:
            envelope = decode(bytes(metadata))
        except ValueError as exc:
            raise ConnectError(f"bad Mooncake peer metadata: {exc}") from exc
        known = self._peers.get(envelope.token)
        if known is not None and known.envelope == envelope:
            return known
        peer = MooncakePeer.from_envelope(envelope)
        state = self._states.setdefault(envelope.token, _PeerState())
        async with state.lock:
            link = self._link(state, peer)
            try:
                token = await self._call(link, functools.partial(_read_token, link, envelope), "connect")
            except Exception as exc:
                self._retire(state)
                raise ConnectError(f"could not reach Mooncake peer {envelope.agent_name!r} at "
                                   f"{envelope.target}: {exc}") from exc
            except BaseException:
                self._retire(state)
                raise
        if token != envelope.token:
            raise ConnectError(f"the Mooncake engine at {envelope.target} is not {envelope.agent_name!r} "
                               "(identity token differs: stale metadata?)")
        self._peers[envelope.token] = peer
        return peer

    def _peer(self, peer: PeerHandle) -> MooncakePeer:
        if not isinstance(peer, MooncakePeer) or self._peers.get(peer.envelope.token) is not peer:
            raise TransferError(f"peer {peer.name!r} was not connected through this transport")
        return peer

    def _link(self, state: _PeerState, peer: MooncakePeer) -> PeerLink:
        if state.link is None or state.link.retired:
            state.link = PeerLink(host=self._host, target=peer.envelope.target, slab_bytes=self._slab_bytes,
                                  slab_count=self._slab_count)
        return state.link

    def _retire(self, state: _PeerState) -> None:
        if state.link is not None:
            state.link.retire()
            state.link = None

    async def _call(self, link: PeerLink, fn: Any, what: str) -> object:
        """Run ``fn(engine)`` on the link, within ``call_timeout``; native errors translated."""
        future = link.submit(fn)
        try:
            with anyio.fail_after(self._call_timeout):
                return await wait_future(self._loop_waker(), future)
        except TimeoutError as exc:
            future.cancel()
            raise TransferTimeout(f"Mooncake {what} to {link.target} did not finish within "
                                  f"{self._call_timeout}s (peer stalled?)") from exc
        except BaseException:
            future.cancel()
            raise

    # -- data and notifications ------------------------------------------------------------

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """READ every row from the peer into our regions, through staging slabs.

        Rows are bounds-checked against both region tables first (one bad row refuses
        the read, no byte moved), then cut into engine calls of at most
        ``max_batch_entries`` entries and ``staging_bytes`` bytes; while one slab is
        copied out the engine fills the next. Reads to one peer take turns.

        Failure raises :class:`TransferError` (the engine's code as ``__cause__``).
        Cancellation returns at once: rows already copied out stay, the rest of the
        destination is untouched and is *never* written later — the reading engine is
        retired with its slabs, so a call still running writes only those. The
        transport stays usable; the next read to that peer starts a fresh engine.
        """
        self._running()
        mc_peer = self._peer(peer)
        check_bounds(batch, src_lengths=mc_peer.lengths, dst_lengths=self._lengths)
        batches = engine_batches(batch, mc_peer.addresses, slab_bytes=self._slab_bytes,
                                 max_entries=self._max_entries)
        if not batches:
            await anyio.lowlevel.checkpoint()
            return
        state = self._states[mc_peer.envelope.token]
        async with state.lock:
            self._running()
            link = self._link(state, mc_peer)
            try:
                await self._read_on(link, batches)
            except BaseException:
                self._retire(state)
                raise

    async def _read_on(self, link: PeerLink, batches: list[EngineBatch]) -> None:
        waiting: collections.deque[tuple[EngineBatch, int, U8, concurrent.futures.Future[object]]] = (
            collections.deque())
        try:
            for eb in batches:
                if len(waiting) >= link.slab_count:
                    await self._land(link, *waiting[0])
                    waiting.popleft()  # only once landed: the finally below cancels what is left
                index, slab = await link.acquire_slab()
                if link.retired:  # aclose() ran while we waited for the slab
                    raise ClosedTransportError("Mooncake transport closed during the read")
                local = (int(slab.ctypes.data) + eb.slab_offset).tolist()
                fn = functools.partial(_read_batch, link.target, local, eb.remote.tolist(), eb.length.tolist())
                waiting.append((eb, index, slab, link.submit(fn)))
            while waiting:
                await self._land(link, *waiting[0])
                waiting.popleft()
        finally:
            for *_, future in waiting:
                future.cancel()  # a no-op once started; one not started never reaches the engine

    async def _land(self, link: PeerLink, eb: EngineBatch, index: int, slab: U8,
                    future: concurrent.futures.Future[object]) -> None:
        try:
            await wait_future(self._loop_waker(), future)
        except Exception as exc:
            raise TransferError(f"Mooncake READ of {len(eb.length)} entries ({eb.nbytes} bytes) from "
                                f"{link.target} failed: {exc}") from exc
        if self._closed:  # aclose() ran meanwhile: the caller's memory is no longer ours to write
            raise ClosedTransportError("Mooncake transport closed during the read")
        copy_out(slab, eb, self._views)  # no await since the check: a cancelled read never copies later
        link.release_slab(index)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Send ``message`` as a Mooncake notification (within ``call_timeout``).

        Raises :class:`BrokenTransportError` when the engine reports a failure and
        :class:`TransferTimeout` past the deadline. Cancellation or a timeout may leave
        the notification sent or not sent.
        """
        self._running()
        mc_peer = self._peer(peer)
        state = self._states[mc_peer.envelope.token]
        fn = functools.partial(_send_note, mc_peer.envelope, self._agent_name, bytes(message).hex())
        async with state.lock:
            link = self._link(state, mc_peer)
            try:
                await self._call(link, functools.partial(fn, link), "notify")
            except TransferTimeout:
                self._retire(state)
                raise
            except Exception as exc:
                self._retire(state)
                raise BrokenTransportError(f"Mooncake notification to {mc_peer.name!r} failed: {exc}") from exc
            except BaseException:
                self._retire(state)
                raise

    async def next_notification(self) -> Notification:
        """The next notification any peer sent us. Cancellation loses nothing."""
        while True:
            self._running()
            if not self._notes:
                for note in self._server.get_notifies():
                    try:
                        message = bytes.fromhex(note.msg)
                    except ValueError:
                        continue  # not one of ours: hybridxfer peers send hex
                    self._notes.append(Notification(str(note.name), message))
            if self._notes:
                await anyio.lowlevel.checkpoint()
                if self._notes:
                    return self._notes.popleft()
            await anyio.sleep(self._poll)


def _read_batch(target: str, local: list[int], remote: list[int], lengths: list[int], engine: Any) -> None:
    read_rows(engine, target, local, remote, lengths)


def _read_token(link: PeerLink, envelope: Envelope, engine: Any) -> bytes:
    """On the link's thread: read the peer's identity token into scratch and return a copy."""
    read_rows(engine, envelope.target, [int(link.scratch.ctypes.data)], [envelope.identity_address], [TOKEN_BYTES])
    return bytes(link.scratch[:TOKEN_BYTES])


def _send_note(envelope: Envelope, sender: str, message: str, link: PeerLink, engine: Any) -> None:
    notify_read(engine, envelope.target, int(link.scratch.ctypes.data), envelope.identity_address, TOKEN_BYTES,
                sender, message)

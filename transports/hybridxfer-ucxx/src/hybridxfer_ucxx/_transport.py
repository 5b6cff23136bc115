"""``UcxxTransport``: two-sided UCXX tag messages behind the hybridxfer transport contract.

Writes (push) run the other way round on the same connections: the writer sends a WRITE
frame, the peer posts receives into its own regions and answers READY, the writer sends
the bytes, the peer answers DONE (``_push``).

The UCXX Python API has no RMA, so D asks and P sends: D posts tag receives straight
into its destination memory, sends a READ frame over a small TCP control connection,
and P sends the requested ranges over a worker-address UCX endpoint with error handling
off (the fast path: sysv for eager, cma zero-copy rendezvous). The TCP connection makes
a dead peer visible at once (EOF), which UCX with error handling off cannot.

Requires the asyncio backend: ucxx drives its progress from the asyncio event loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.errors import (
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
    TransportError,
)
from hybridxfer.transport import (
    Descriptors,
    GrantTable,
    MemoryRegion,
    Notification,
    PeerHandle,
    TransportCapabilities,
    check_bounds,
)

from hybridxfer_ucxx._client import UcxxPeer
from hybridxfer_ucxx._context import ucxx_module
from hybridxfer_ucxx._envelope import UcxxEnvelope, decode, encode
from hybridxfer_ucxx._memory import byte_view
from hybridxfer_ucxx._serve import serve_connection

__all__ = ["UcxxTransport"]


class UcxxTransport:
    """UCXX transport for host memory (asyncio only).

    ``host``/``port``: where the control listener binds (loopback by default).
    ``zero_copy_bytes``: rows at least this long travel as their own zero-copy message;
    shorter rows are packed into messages of up to ``pack_bytes`` (see ``_schedule``).
    ``read_timeout``: per-read deadline → :class:`~hybridxfer.errors.TransferTimeout`.
    ``endpoint_error_handling``: keep it ``True`` unless a peer's death may take this
    process down. ``False`` is the fast path (UCX may use shared memory and cma: ~10 GB/s
    measured against ~1 GB/s over tcp/lo), but UCX then *aborts the process* when a peer
    dies mid-transfer (observed in the conformance suite's kill test). Both ends of a
    pair use the value the reading side chose. ``require_grants``: serve a READ only
    inside a live grant in :attr:`grants` (``grants``: that table, default a fresh one) of
    the reader's declared agent name, and a WRITE only inside a live write grant of the
    writer's; a refusal raises :class:`~hybridxfer.errors.GrantRefusedError` on the
    reader (writer).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        zero_copy_bytes: int = 64 << 10,
        pack_bytes: int = 4 << 20,
        read_timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        endpoint_error_handling: bool = True,
        require_grants: bool = False,
        grants: GrantTable | None = None,
    ) -> None:
        self._agent_name = name or f"hx-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._host, self._port = host, port
        self._zero_copy_bytes, self._pack_bytes = zero_copy_bytes, pack_bytes
        self._read_timeout, self._connect_timeout = read_timeout, connect_timeout
        self._error_handling = endpoint_error_handling
        #: Request-scoped grants, checked before every READ when ``require_grants``; the
        #: peer identity is the agent name its HELLO declares (not authenticated).
        self.grants = grants if grants is not None else GrantTable()
        self.require_grants = bool(require_grants)
        self._regions: list[MemoryRegion] = []
        self._views: list[npt.NDArray[np.uint8]] = []
        self._peers: list[UcxxPeer] = []
        self._ucxx: Any = None
        self._worker_address = b""
        self._tg: anyio.abc.TaskGroup | None = None
        self._resources: contextlib.AsyncExitStack | None = None
        self._bound: tuple[str, int] = ("", 0)
        self._closed = False
        self._notes_in: MemoryObjectSendStream[Notification] | None = None
        self._notes_out: MemoryObjectReceiveStream[Notification] | None = None

    @property
    def name(self) -> str:
        return "ucxx"

    @property
    def agent_name(self) -> str:
        """Our name as peers see it (``Notification.peer_name``, ``PeerHandle.name``)."""
        return self._agent_name

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(memory_kinds=frozenset({"host"}), one_sided=False, notifications=True,
                                     writes=True)

    async def __aenter__(self) -> UcxxTransport:
        if sniffio.current_async_library() != "asyncio":
            raise TransportError("the ucxx transport requires anyio's asyncio backend (ucxx is asyncio-based)")
        if self._closed or self._tg is not None:
            raise ClosedTransportError("a UCXX transport can be entered once")
        self._ucxx = ucxx_module()
        self._ucxx.continuous_ucx_progress()
        self._worker_address = bytes(self._ucxx.get_worker_address().tobytes())
        # Everything entered here is owned by one stack and released in reverse order: stop the
        # serving and reader tasks, close the peers, the notification stream, then the listener.
        async with contextlib.AsyncExitStack() as stack:
            multi = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
            stack.push_async_callback(_shielded(multi.aclose))
            notes_in, notes_out = anyio.create_memory_object_stream[Notification](math.inf)
            stack.callback(notes_out.close)
            stack.callback(notes_in.close)
            stack.push_async_callback(self._close_peers)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            address = multi.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
            self._bound = (str(address[0]), int(address[1]))
            group.start_soon(multi.serve, self._serve)
            self._notes_in, self._notes_out, self._tg = notes_in, notes_out, group
            self._resources = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close peers, the listener and every served connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.aclose()

    async def _close_peers(self) -> None:
        with anyio.CancelScope(shield=True):     # a cancelled close must still release the endpoints
            for peer in self._peers:
                await peer.aclose()
            self._peers.clear()

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        await serve_connection(
            stream,
            ucxx=self._ucxx,
            views=lambda: self._views,
            deliver=self._deliver,
            zero_copy_bytes=self._zero_copy_bytes,
            pack_bytes=self._pack_bytes,
            authorize=self.grants.authorize if self.require_grants else None,
            authorize_write=self.grants.authorize_write if self.require_grants else None,
        )

    def _deliver(self, note: Notification) -> None:
        if self._notes_in is not None:
            try:
                self._notes_in.send_nowait(note)
            except anyio.ClosedResourceError:
                pass

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Make regions readable by peers and writable by our reads (host memory only)."""
        self._running()
        names = {r.name for r in self._regions}
        for region in regions:
            if region.name in names:
                raise RegistrationError(f"region {region.name!r} is already registered")
            if region.kind != "host":
                raise RegistrationError(f"region {region.name!r}: the ucxx transport supports host memory only")
            names.add(region.name)
        self._regions.extend(regions)
        self._views = [*self._views, *(byte_view(r.address, r.length) for r in regions)]
        await anyio.lowlevel.checkpoint()

    def local_metadata(self) -> bytes:
        self._running()
        host, port = self._bound
        return encode(
            UcxxEnvelope(
                agent_name=self._agent_name,
                host=host,
                port=port,
                region_names=tuple(r.name for r in self._regions),
                region_lengths=tuple(r.length for r in self._regions),
                worker_address=self._worker_address,
            )
        )

    async def connect(self, metadata: bytes) -> UcxxPeer:
        """Open the control connection and introduce ourselves; UCX connects on first read."""
        self._running()
        assert self._tg is not None
        try:
            env = decode(metadata)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ConnectError(f"bad UCXX peer metadata: {exc}") from exc
        try:
            with anyio.fail_after(self._connect_timeout):
                stream = await anyio.connect_tcp(env.host, env.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"cannot reach UCXX peer {env.agent_name!r} at {env.host}:{env.port}: {exc}") from exc
        peer = UcxxPeer(
            name=env.agent_name,
            region_names=env.region_names,
            region_lengths=env.region_lengths,
            stream=stream,
            ucxx=self._ucxx,
            worker_address=env.worker_address,
            tag_base=secrets.randbits(40) << 24,
            error_handling=self._error_handling,
        )
        try:
            await peer.hello(self._agent_name, self._worker_address)
        except (OSError, anyio.BrokenResourceError) as exc:
            await stream.aclose()
            raise ConnectError(f"handshake with {env.agent_name!r} failed: {exc}") from exc
        self._tg.start_soon(peer.run_reader)
        self._peers.append(peer)
        return peer

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Receive every row of ``batch`` from ``peer`` straight into our regions.

        On cancellation (or timeout) the UCX endpoint to that peer is aborted, which
        cancels our posted receives, so nothing writes into the destination after this
        returns; the destination is undefined (possibly partly written), other reads on
        the same peer in flight at that moment fail, and the next read reconnects.
        """
        self._running()
        if not isinstance(peer, UcxxPeer) or peer not in self._peers:
            raise TransferError(f"peer {peer.name!r} was not connected through this transport")
        check_bounds(batch, src_lengths=peer.region_lengths, dst_lengths=[r.length for r in self._regions])
        if not len(batch) or not batch.length.any():
            await anyio.lowlevel.checkpoint()
            return
        await peer.read(
            self._views,
            batch,
            zero_copy_bytes=self._zero_copy_bytes,
            pack_bytes=self._pack_bytes,
            timeout=self._read_timeout,
        )

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Push every row of ``batch`` from our regions into ``peer``'s (two-sided: the
        peer's serving loop receives into its regions and acknowledges; see ``_push``).

        ``read_timeout`` bounds it too. On cancellation (or timeout) our endpoint to the
        peer is aborted, as for a read: the peer's destination is undefined (possibly
        partly written), and the next operation reconnects.
        """
        self._running()
        if not isinstance(peer, UcxxPeer) or peer not in self._peers:
            raise TransferError(f"peer {peer.name!r} was not connected through this transport")
        check_bounds(batch, src_lengths=[r.length for r in self._regions], dst_lengths=peer.region_lengths,
                     operation="write")
        if not len(batch) or not batch.length.any():
            await anyio.lowlevel.checkpoint()
            return
        await peer.write(
            self._views,
            batch,
            zero_copy_bytes=self._zero_copy_bytes,
            pack_bytes=self._pack_bytes,
            timeout=self._read_timeout,
        )

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Deliver ``message``; returns once the peer acknowledged it.

        Cancellation may leave it delivered or not.
        """
        self._running()
        if not isinstance(peer, UcxxPeer) or peer not in self._peers:
            raise TransferError(f"peer {peer.name!r} was not connected through this transport")
        await peer.notify(bytes(message))

    async def next_notification(self) -> Notification:
        """Wait for the next notification. Cancellation loses nothing."""
        self._running()
        assert self._notes_out is not None
        try:
            return await self._notes_out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedTransportError("UCXX transport closed") from exc

    def _running(self) -> None:
        if self._closed:
            raise ClosedTransportError("UCXX transport is closed")
        if self._tg is None:
            raise NotStartedError("use the UCXX transport inside 'async with'")


def _shielded(close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``close``, run to the end even when the closing task is being cancelled."""
    async def run() -> None:
        with anyio.CancelScope(shield=True):
            await close()
    return run

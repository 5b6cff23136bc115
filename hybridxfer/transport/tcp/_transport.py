"""``TcpTransport``: the always-available fallback wire, in plain Python on anyio.

Every transport both serves (its registered regions, to authenticated peers) and reads
(from peers it connected to). Why plain TCP at all: on hosts without RDMA it beats UCX's
own tcp transport several times over (spec 1c), and it needs nothing but the stdlib.
Security model: listens on 127.0.0.1 unless told otherwise; a shared secret (option
``secret`` or ``HYBRIDXFER_SECRET``) is required on any other address; there is *no
encryption* — across untrusted networks tunnel it (WireGuard, SSH) or use an RDMA fabric.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
import anyio.abc
import numpy as np

from hybridxfer.errors import AuthenticationError, ClosedTransportError, ConnectError, TransferError
from hybridxfer.transport._protocol import MemoryRegion, Notification, PeerHandle, ReadBatch, TransportCapabilities
from hybridxfer.transport._ranges import coalesce_pairs, coalesce_runs, find_range_problem, region_view
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._client import ClientOptions, TcpPeer
from hybridxfer.transport.tcp._server import ServerLimits, TcpServer, close_socket

__all__ = ["TcpTransport"]

log = logging.getLogger("hybridxfer.transport.tcp")

_METADATA_VERSION = 1
SECRET_ENV = "HYBRIDXFER_SECRET"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (no secret needed to listen there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TcpTransport:
    """Two-sided reads over authenticated TCP; see the module docstring for the threat model.

    Options: ``name`` (agent name), ``host``/``port`` (listen address, default 127.0.0.1
    and an ephemeral port), ``secret`` (str or bytes; default ``$HYBRIDXFER_SECRET``),
    ``connections_per_peer`` (parallel connections used to split one large read),
    ``split_bytes`` (smallest read worth splitting), timeouts in seconds.

    Serving runs in a task group entered by ``__aenter__``; close it (``async with``) from
    the task that entered it.
    """

    def __init__(
        self,
        *,
        name: str = "tcp-agent",
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | bytes | None = None,
        advertise_host: str | None = None,
        connections_per_peer: int = 1,
        split_bytes: int = 64 << 20,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        raw = secret if secret is not None else os.environ.get(SECRET_ENV)
        self._secret = raw.encode() if isinstance(raw, str) else (raw or b"")
        if not self._secret and not is_loopback(host):
            raise AuthenticationError(
                f"refusing to listen on {host} without a shared secret: pass secret= or set {SECRET_ENV}"
            )
        self.agent_name = name
        self._host, self._port = host, port
        self._advertise = advertise_host or host
        self._connections_per_peer = max(1, connections_per_peer)
        self._split_bytes = split_bytes
        self._client = ClientOptions(name, self._secret, connect_timeout, stall_timeout)
        self._limits = ServerLimits(handshake_timeout, stall_timeout, None, max_connections)
        self._regions: list[tuple[MemoryRegion, memoryview]] = []
        self._peers: list[TcpPeer] = []
        # Created on entry: an unentered transport owns nothing that needs closing.
        self._send: MemoryObjectSendStream[Notification] | None = None
        self._receive: MemoryObjectReceiveStream[Notification] | None = None
        self._listener: socket.socket | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = False

    def __repr__(self) -> str:  # never show the secret
        return f"<TcpTransport {self.agent_name!r} on {self._host}:{self._port}>"

    @property
    def name(self) -> str:
        return "tcp"

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(
            memory_kinds=frozenset({"host"}), one_sided=False, notifications=True,
            max_descriptors_per_read=None,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) once entered."""
        return self._host, self._port

    async def __aenter__(self) -> TcpTransport:
        if self._closed:
            raise ClosedTransportError("TcpTransport cannot be re-entered after aclose()")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ConnectError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._send, self._receive = anyio.create_memory_object_stream[Notification](math.inf)
        server = TcpServer(name=self.agent_name, regions=lambda: self._regions, secret=self._secret,
                           notifications=self._send, limits=self._limits)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(server.serve, listener, self._task_group)
        log.info("tcp transport %s listening on %s:%d", self.agent_name, self._host, self._port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed or self._task_group is None:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} is closed or not entered")

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register host regions; peers may read them as soon as this returns."""
        self._check_open()
        names = {r.name for r, _ in self._regions}
        new = []
        for region in regions:
            if region.name in names:
                raise ValueError(f"region {region.name!r} is already registered")
            names.add(region.name)
            new.append((region, region_view(region)))
        self._regions.extend(new)
        await anyio.lowlevel.checkpoint()

    def local_metadata(self) -> bytes:
        self._check_open()
        doc = {
            "v": _METADATA_VERSION, "transport": "tcp", "name": self.agent_name,
            "host": self._advertise, "port": self._port,
            "regions": [[r.name, r.length] for r, _ in self._regions],
        }
        return json.dumps(doc, sort_keys=True).encode()

    async def connect(self, metadata: bytes) -> TcpPeer:
        """Reach the peer and authenticate one connection now (fails early, typed)."""
        self._check_open()
        try:
            doc = json.loads(metadata)
            if doc.get("v") != _METADATA_VERSION or doc.get("transport") != "tcp":
                raise ValueError(f"not tcp metadata v{_METADATA_VERSION}")
            regions = [(str(n), int(length)) for n, length in doc["regions"]]
            peer = TcpPeer(name=str(doc["name"]), region_names=[n for n, _ in regions],
                           region_lengths=[length for _, length in regions], host=str(doc["host"]),
                           port=int(doc["port"]), options=self._client,
                           max_connections=self._connections_per_peer)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConnectError(f"malformed tcp metadata: {exc}") from exc
        await peer.warm_up()
        self._peers.append(peer)
        log.info("tcp transport %s connected to %s at %s:%d", self.agent_name, peer.name, peer.host, peer.port)
        return peer

    def _tcp_peer(self, peer: PeerHandle) -> TcpPeer:
        self._check_open()
        if not isinstance(peer, TcpPeer):
            raise TypeError(f"not a tcp peer: {peer!r}")
        return peer

    async def read(self, peer: PeerHandle, batch: ReadBatch) -> None:
        """Read the batch from the peer straight into our registered regions.

        Split into READ frames of at most 65,536 descriptors and, above ``split_bytes``,
        across ``connections_per_peer`` connections in parallel. Cancellation leaves the
        destination ranges undefined and closes the connections that were mid-reply; the
        transport and the peer stay usable.
        """
        tcp_peer = self._tcp_peer(peer)
        if len(batch) == 0:
            await anyio.lowlevel.checkpoint()
            return
        problem = find_range_problem(batch.dst_region, batch.dst_offset, batch.length,
                                     [r.length for r, _ in self._regions])
        if problem is not None:
            raise TransferError(f"read refused, destination outside our registered memory: {problem}")
        parts = self._split(batch)
        if len(parts) == 1:
            await self._read_part(tcp_peer, parts[0])
            return
        failures: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            for part in parts:
                tg.start_soon(self._guarded_part, tcp_peer, part, failures, tg.cancel_scope)
        if failures:
            raise failures[0]

    def _split(self, batch: ReadBatch) -> list[ReadBatch]:
        rows = len(batch)
        pieces = max(1, -(-rows // _wire.MAX_DESCRIPTORS_PER_READ))
        if self._connections_per_peer > 1 and batch.total_bytes >= self._split_bytes:
            pieces = max(pieces, self._connections_per_peer)
        if pieces == 1:
            return [batch]
        # Cut where the cumulative byte count crosses each 1/pieces mark, capped per frame.
        cum = np.cumsum(batch.length)
        marks = np.searchsorted(cum, cum[-1] * np.arange(1, pieces) / pieces, side="right")
        cuts = sorted({0, rows, *[int(m) for m in marks]})
        out: list[ReadBatch] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            for s in range(a, b, _wire.MAX_DESCRIPTORS_PER_READ):
                out.append(batch.slice(s, min(b, s + _wire.MAX_DESCRIPTORS_PER_READ)))
        return out

    async def _guarded_part(self, peer: TcpPeer, part: ReadBatch, failures: list[BaseException],
                            scope: anyio.CancelScope) -> None:
        try:
            await self._read_part(peer, part)
        except TransferError as exc:
            failures.append(exc)
            scope.cancel()

    async def _read_part(self, peer: TcpPeer, part: ReadBatch) -> None:
        sr, so, dr, do, ln = coalesce_pairs(part.src_region, part.src_offset, part.dst_region,
                                            part.dst_offset, part.length)
        if len(ln) == 0:
            # Only empty rows: still let the peer check their regions (same refusal rules).
            sr, so, ln = part.src_region, part.src_offset, part.length
            dst_runs = (ln[:0], ln[:0], ln[:0])
        else:
            dst_runs = coalesce_runs(dr, do, ln)
        views = [v for _, v in self._regions]
        await peer.read(sr, so, ln, views, dst_runs, int(ln.sum()))

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Deliver ``message``; returns after the peer acknowledged it (exactly once).

        Cancellation: the message may or may not have been delivered.
        """
        if len(message) > _wire.MAX_NOTIFY_BYTES:
            raise ValueError(f"notification of {len(message)} bytes exceeds {_wire.MAX_NOTIFY_BYTES}")
        await self._tcp_peer(peer).notify(bytes(message))

    async def next_notification(self) -> Notification:
        """Wait for the next notification. Cancellation consumes nothing."""
        if self._closed:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} is closed")
        if self._receive is None:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} was never entered")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} is closed") from exc

    async def aclose(self) -> None:
        """Stop serving, close every socket. Idempotent; in-flight reads fail as closed."""
        if self._closed:
            return
        self._closed = True
        for peer in self._peers:
            peer.close()
        self._peers.clear()
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()
        tg, self._task_group = self._task_group, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._listener is not None:
            close_socket(self._listener)
            self._listener = None

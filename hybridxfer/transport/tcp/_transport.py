"""``TcpTransport``: the always-available fallback wire, in plain Python on anyio.

Every transport both serves (its registered regions, to authenticated peers) and reads
(from peers it connected to). Why plain TCP at all: on hosts without RDMA it beats UCX's
own tcp transport several times over (spec 1c), and it needs nothing but the stdlib.
Security model: listens on 127.0.0.1 unless told otherwise; on any other address it needs
a shared secret (option ``secret`` or ``HYBRIDXFER_SECRET``) or TLS (option ``tls``), or
both. With ``tls`` every connection is TLS 1.3 with mutual certificate authentication:
encrypted, and the peer identity is its certificate's subject. Without it, bytes travel
in clear text, authenticated by the secret only — tunnel them across untrusted networks.
See ``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.descriptors import Descriptors, check_bounds
from hybridxfer.errors import (
    InvalidArgumentError,
    AuthenticationError,
    ClosedTransportError,
    ConnectError,
    NotStartedError,
    RegistrationError,
    TransferError,
    TransportError,
)
from hybridxfer.transport._grants import GrantTable
from hybridxfer.transport._protocol import MemoryRegion, Notification, PeerHandle, TransportCapabilities
from hybridxfer.transport._tls import TlsConfig, tls_config
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._client import ClientOptions, TcpPeer
from hybridxfer.transport.tcp._io import region_view
from hybridxfer.transport.tcp._server import ServerLimits, TcpServer, close_socket
from hybridxfer.transport.tcp._write import write_batch

__all__ = ["SECRET_ENV", "TcpTransport", "is_loopback"]

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
    """Two-sided reads and writes over authenticated TCP; see the module docstring for the threat model.

    Options: ``name`` (agent name), ``host``/``port`` (listen address, default 127.0.0.1
    and an ephemeral port), ``secret`` (str or bytes; default ``$HYBRIDXFER_SECRET``),
    ``connections_per_peer`` (parallel connections used to split one large read),
    ``split_bytes`` (smallest read worth splitting), timeouts in seconds, ``incarnation``
    (this transport's random id, default a fresh one: published in the metadata and in
    every CHALLENGE, so a reader reconnecting to a restarted server refuses it before
    reading — :class:`~hybridxfer.errors.PeerRestartedError`; an
    :class:`~hybridxfer.execute.Agent` adopts it as its own incarnation), ``tls`` (a
    :class:`~hybridxfer.transport.TlsConfig`, or a mapping with its ``cert``, ``key`` and
    ``ca`` paths: TLS 1.3, both certificates verified, on every connection served or
    opened; the files are loaded here, so a bad one fails now with
    :class:`~hybridxfer.transport.TlsConfigError`), ``require_grants`` (serve a READ only
    when every row lies inside a live grant of the asking peer in :attr:`grants`, else
    refuse it whole, logged, and the reader raises
    :class:`~hybridxfer.errors.GrantRefusedError`; the peer is its certificate's subject
    under TLS, else its authenticated client name); ``grants`` (that table, default a fresh one).

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
        incarnation: str | None = None,
        tls: TlsConfig | Mapping[str, str] | None = None,
        require_grants: bool = False,
        grants: GrantTable | None = None,
    ) -> None:
        raw = secret if secret is not None else os.environ.get(SECRET_ENV)
        self._secret = raw.encode() if isinstance(raw, str) else (raw or b"")
        config = tls_config(tls)
        self._tls = config.load() if config is not None else None
        if not self._secret and self._tls is None and not is_loopback(host):
            raise AuthenticationError(
                f"refusing to listen on {host} without a shared secret or TLS: pass secret= (or set "
                f"{SECRET_ENV}) or tls="
            )
        self.agent_name = name
        #: Who may read what (request-scoped grants); checked before every READ when
        #: ``require_grants`` (see :mod:`hybridxfer.transport._grants`).
        self.grants = grants if grants is not None else GrantTable()
        self.require_grants = bool(require_grants)
        self.incarnation = incarnation if incarnation is not None else secrets.token_hex(8)
        if len(name.encode()) + 1 + len(self.incarnation.encode()) > _wire.MAX_NAME_BYTES:
            raise InvalidArgumentError(f"agent name and incarnation exceed {_wire.MAX_NAME_BYTES} bytes: {name!r}")
        self._host, self._port = host, port
        self._advertise = advertise_host or host
        self._connections_per_peer = max(1, connections_per_peer)
        self._split_bytes = split_bytes
        self._client = ClientOptions(name, self._secret, connect_timeout, stall_timeout, self._tls)
        self._limits = ServerLimits(handshake_timeout, stall_timeout, None, max_connections)
        self._regions: list[tuple[MemoryRegion, memoryview]] = []
        self._peers: list[TcpPeer] = []
        # Created on entry: an unentered transport owns nothing that needs closing.
        self._send: MemoryObjectSendStream[Notification] | None = None
        self._receive: MemoryObjectReceiveStream[Notification] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._resources: contextlib.AsyncExitStack | None = None
        self._closed = False

    def __repr__(self) -> str:  # never show the secret
        return f"<TcpTransport {self.agent_name!r} on {self._host}:{self._port}{' (TLS)' if self._tls else ''}>"

    @property
    def tls(self) -> TlsConfig | None:
        """The TLS configuration in force (None: clear text)."""
        return self._tls.config if self._tls is not None else None

    @property
    def name(self) -> str:
        return "tcp"

    @property
    def capabilities(self) -> TransportCapabilities:
        return TransportCapabilities(
            memory_kinds=frozenset({"host"}), one_sided=False, notifications=True,
            max_descriptors_per_read=_wire.MAX_DESCRIPTORS_PER_READ, writes=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) once entered."""
        return self._host, self._port

    async def __aenter__(self) -> TcpTransport:
        if self._closed:
            raise ClosedTransportError("TcpTransport cannot be re-entered after aclose()")
        if self._resources is not None:
            raise ClosedTransportError("a TcpTransport can be entered once")
        async with contextlib.AsyncExitStack() as stack:
            listener = self._listen()
            stack.callback(close_socket, listener)
            self._port = listener.getsockname()[1]
            send, receive = anyio.create_memory_object_stream[Notification](math.inf)
            stack.callback(receive.close)
            stack.callback(send.close)
            server = TcpServer(name=self.agent_name, regions=lambda: self._regions, secret=self._secret,
                               notifications=send, limits=self._limits, incarnation=self.incarnation,
                               tls=self._tls, authorize=self.grants.authorize if self.require_grants else None,
                               authorize_write=self.grants.authorize_write if self.require_grants else None)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            group.start_soon(server.serve, listener, group)
            self._send, self._receive, self._task_group = send, receive, group
            self._resources = stack.pop_all()
        log.info("tcp transport %s listening on %s:%d", self.agent_name, self._host, self._port)
        return self

    def _listen(self) -> socket.socket:
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
        return listener

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} is closed")
        if self._task_group is None:
            raise NotStartedError(f"tcp transport {self.agent_name!r} was never entered (use 'async with')")

    async def register(self, regions: Sequence[MemoryRegion]) -> None:
        """Register host regions; peers may read them as soon as this returns."""
        self._check_open()
        names = {r.name for r, _ in self._regions}
        new = []
        for region in regions:
            if region.name in names:
                raise RegistrationError(f"region {region.name!r} is already registered")
            if region.kind != "host":
                raise RegistrationError(f"region {region.name!r}: the tcp transport handles host memory only, "
                                        f"not {region.kind}")
            names.add(region.name)
            new.append((region, region_view(region)))
        self._regions.extend(new)
        await anyio.lowlevel.checkpoint()

    def local_metadata(self) -> bytes:
        self._check_open()
        doc = {
            "v": _METADATA_VERSION, "transport": "tcp", "name": self.agent_name,
            "host": self._advertise, "port": self._port, "incarnation": self.incarnation,
            "regions": [[r.name, r.length] for r, _ in self._regions],
        }
        if self._tls is not None:
            doc["tls"] = True
        return json.dumps(doc, sort_keys=True).encode()

    async def connect(self, metadata: bytes) -> TcpPeer:
        """Reach the peer and authenticate one connection now (fails early, typed)."""
        self._check_open()
        try:
            doc = json.loads(metadata)
            if doc.get("v") != _METADATA_VERSION or doc.get("transport") != "tcp":
                raise ConnectError(f"not tcp metadata v{_METADATA_VERSION}")
            # Refused up front rather than by a handshake that cannot succeed. The metadata
            # cannot weaken us: with tls set every connection is TLS whatever it says.
            if doc.get("tls") is True and self._tls is None:
                raise AuthenticationError(f"peer {doc.get('name')!r} requires TLS: give this transport tls=")
            if doc.get("tls") is not True and self._tls is not None:
                raise AuthenticationError(f"peer {doc.get('name')!r} does not offer TLS; this transport "
                                          "refuses clear text")
            regions = [(str(n), int(length)) for n, length in doc["regions"]]
            peer = TcpPeer(name=str(doc["name"]), region_names=[n for n, _ in regions],
                           region_lengths=[length for _, length in regions], host=str(doc["host"]),
                           port=int(doc["port"]), options=self._client,
                           max_connections=self._connections_per_peer,
                           incarnation=str(doc.get("incarnation", "")))
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

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Read the descriptors from the peer straight into our registered regions.

        One READ frame (at most ``max_descriptors_per_read`` rows, which the executor
        splits at) and, above ``split_bytes``, one frame per connection of
        ``connections_per_peer`` in parallel. Cancellation leaves the destination ranges
        undefined and closes the connections that were mid-reply; the transport and the
        peer stay usable.
        """
        tcp_peer = self._tcp_peer(peer)
        if len(batch) == 0:
            await anyio.lowlevel.checkpoint()
            return
        check_bounds(batch, dst_lengths=[r.length for r, _ in self._regions])
        parts = self._split(batch)
        views = [v for _, v in self._regions]
        if len(parts) == 1:
            await tcp_peer.read(parts[0], views)
            return
        failures: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            for part in parts:
                tg.start_soon(self._guarded_part, tcp_peer, part, views, failures, tg.cancel_scope)
        if failures:
            raise failures[0]

    def _split(self, batch: Descriptors) -> tuple[Descriptors, ...]:
        """One part per frame; several, for parallel connections, when the read is large."""
        parallel = self._connections_per_peer > 1 and batch.total_bytes >= self._split_bytes
        return batch.split(_wire.MAX_DESCRIPTORS_PER_READ, parts=self._connections_per_peer if parallel else 1)

    async def _guarded_part(self, peer: TcpPeer, part: Descriptors, views: Sequence[memoryview],
                            failures: list[BaseException], scope: anyio.CancelScope) -> None:
        try:
            await peer.read(part, views)
        except TransportError as exc:
            failures.append(exc)
            scope.cancel()

    async def write(self, peer: PeerHandle, batch: Descriptors) -> None:
        """Push the descriptors from our registered regions into the peer's (one WRITE
        round trip per frame; split like a read). Cancellation leaves the peer's
        destination ranges undefined and closes the connections that were mid-write; the
        transport and the peer stay usable. See :mod:`._write`."""
        tcp_peer = self._tcp_peer(peer)
        await write_batch(tcp_peer, batch, self._regions, self._split(batch))

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        """Deliver ``message``; returns after the peer acknowledged it (exactly once).

        Cancellation: the message may or may not have been delivered.
        """
        if len(message) > _wire.MAX_NOTIFY_BYTES:
            raise TransportError(f"notification of {len(message)} bytes exceeds {_wire.MAX_NOTIFY_BYTES}")
        await self._tcp_peer(peer).notify(bytes(message))

    async def next_notification(self) -> Notification:
        """Wait for the next notification. Cancellation consumes nothing."""
        if self._closed:
            raise ClosedTransportError(f"tcp transport {self.agent_name!r} is closed")
        if self._receive is None:
            raise NotStartedError(f"tcp transport {self.agent_name!r} was never entered")
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
        # Owned in one stack, released in reverse order of acquisition: stop the server's
        # tasks, then close the notification stream (waiters see ClosedTransportError), then
        # the listening socket.
        resources, self._resources, self._task_group = self._resources, None, None
        if resources is not None:
            await resources.aclose()

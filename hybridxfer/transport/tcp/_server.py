"""The serving (P) side of the TCP transport: authenticate, check, then scatter-gather send.

Why it is built this way:

* Every connection is its own task with its own deadlines (handshake, frame body, send
  stall), so a client that connects and goes silent, sends half a frame or stops reading
  only ever stalls itself. The number of connections is capped.
* Authentication happens before any request is even parsed. With TLS configured, the
  TLS 1.3 handshake comes first and a client without a certificate from our CA never
  gets a single frame (its identity is then its certificate's subject); the client must
  also prove it knows the shared secret, when one is set (HMAC over our fresh nonce,
  compared in constant time).
* Every requested range is checked against the registered regions *before* the first byte
  is sent; one bad row refuses the whole batch (``READ_ERR``), is logged, and the
  connection stays usable. We never serve memory that was not registered.
* Data leaves with ``sendmsg`` straight from the registered regions (no copy), with
  source ranges that continue each other sent as one buffer.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from hybridxfer.descriptors import bounds_problem, merge_ranges
from hybridxfer.errors import BrokenTransportError, ProtocolError
from hybridxfer.transport._grants import ReadAuthorizer
from hybridxfer.transport._protocol import MemoryRegion, Notification
from hybridxfer.transport._tls import TlsContexts, TlsIdentity
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._io import recv_exactly, send_runs, send_views, tls_handshake, wrap_tls
from hybridxfer.transport.tcp._write_serve import serve_write

__all__ = ["Client", "ServerLimits", "TcpServer", "close_socket", "tune_socket"]

log = logging.getLogger("hybridxfer.transport.tcp.server")


@attrs.frozen
class ServerLimits:
    """Per-connection deadlines and caps that keep one client from hurting the others."""

    #: Seconds a client has to authenticate after connecting.
    handshake_timeout: float = 10.0
    #: Seconds of no progress tolerated inside a frame or while sending a reply.
    stall_timeout: float = 30.0
    #: Seconds a connection may sit idle between requests (None: forever).
    idle_timeout: float | None = None
    max_connections: int = 256


@attrs.frozen
class Client:
    """Who an authenticated connection belongs to.

    ``identity`` is what access decisions bind to: under TLS the subject of the client's
    verified certificate, else the name it authenticated with (its address if empty).
    ``name`` is the agent name it declared in AUTH, which notifications carry; under TLS
    it is *not* proof of anything."""

    identity: str
    name: str


class TcpServer:
    """Accepts connections on a listening socket and serves reads of registered memory."""

    def __init__(
        self,
        *,
        name: str,
        regions: Callable[[], Sequence[tuple[MemoryRegion, memoryview]]],
        secret: bytes,
        notifications: MemoryObjectSendStream[Notification],
        limits: ServerLimits,
        incarnation: str = "",
        tls: TlsContexts | None = None,
        authorize: ReadAuthorizer | None = None,
        authorize_write: ReadAuthorizer | None = None,
    ) -> None:
        self._name = name
        self._tls = tls
        # grants: asked before any READ is served (None: every authenticated peer may read)
        self._authorize = authorize
        self._authorize_write = authorize_write
        self._incarnation = incarnation
        self._regions = regions
        self._secret = secret
        self._notifications = notifications
        self._limits = limits
        self._connections: set[socket.socket] = set()

    async def serve(self, listener: socket.socket, task_group: anyio.abc.TaskGroup) -> None:
        """Accept until cancelled. Cancellation closes every served connection."""
        try:
            while True:
                try:
                    conn, addr = listener.accept()
                except BlockingIOError:
                    await anyio.wait_readable(listener)
                    continue
                except OSError as exc:
                    log.warning("tcp server %s: accept failed: %s", self._name, exc)
                    await anyio.sleep(0.01)
                    continue
                if len(self._connections) >= self._limits.max_connections:
                    log.warning("tcp server %s: refusing %s, connection limit reached", self._name, addr)
                    conn.close()
                    continue
                conn.setblocking(False)
                tune_socket(conn)
                self._connections.add(conn)
                task_group.start_soon(self._handle, conn, f"{addr[0]}:{addr[1]}")
        finally:
            for conn in list(self._connections):
                close_socket(conn)

    async def _handle(self, conn: socket.socket, where: str) -> None:
        client = where
        try:
            with anyio.fail_after(self._limits.handshake_timeout):
                identity: TlsIdentity | None = None
                if self._tls is not None:
                    conn, identity = await self._start_tls(conn, where)
                    if identity is None:
                        return
                who = await self._authenticate(conn, where, identity)
            if who is None:
                return
            client = who.identity
            log.info("tcp server %s: authenticated %s from %s%s", self._name, client, where,
                     " (TLS certificate)" if identity is not None else "")
            await self._serve_requests(conn, who)
        except BrokenTransportError as exc:
            log.debug("tcp server %s: %s disconnected: %s", self._name, client, exc)
        except ProtocolError as exc:
            log.warning("tcp server %s: protocol error from %s, closing: %s", self._name, client, exc)
        except TimeoutError:
            log.warning("tcp server %s: %s stalled past its deadline, closing", self._name, client)
        except OSError as exc:
            log.warning("tcp server %s: connection from %s failed: %s", self._name, client, exc)
        finally:
            self._connections.discard(conn)
            close_socket(conn)

    async def _read_frame(
        self, conn: socket.socket, idle: float | None
    ) -> tuple[_wire.FrameType, _wire.Payload]:
        with anyio.fail_after(math.inf if idle is None else idle):
            header = await recv_exactly(conn, _wire.HEADER.size, None)
        frame_type, length = _wire.parse_header(header)
        payload = await recv_exactly(conn, length, self._limits.stall_timeout) if length else b""
        return frame_type, _wire.decode_payload(frame_type, payload)

    async def _start_tls(self, conn: socket.socket, where: str) -> tuple[socket.socket, TlsIdentity | None]:
        """TLS handshake with a mandatory, CA-verified client certificate; the TLS socket
        (it replaces ``conn``) and the certificate's identity, or None when refused —
        then nothing but TLS alerts was sent."""
        assert self._tls is not None
        tls = wrap_tls(conn, self._tls.server, server_side=True)
        self._connections.discard(conn)
        self._connections.add(tls)
        try:
            await tls_handshake(tls, self._limits.stall_timeout)
        except ssl.SSLError as exc:
            log.warning("tcp server %s: TLS handshake with %s refused: %s", self._name, where,
                        getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__)
            return tls, None
        except BaseException:
            self._connections.discard(tls)
            close_socket(tls)
            raise
        identity = TlsIdentity.of(tls)
        if not identity.name:
            log.warning("tcp server %s: refused %s: its certificate names no subject", self._name, where)
            return tls, None
        return tls, identity

    async def _authenticate(self, conn: socket.socket, where: str,
                            identity: TlsIdentity | None = None) -> Client | None:
        """Who the client is (None: refused). Under TLS its identity is the certificate's
        subject, never the name the client declares in AUTH."""
        nonce = os.urandom(_wire.NONCE_BYTES)
        challenge = _wire.encode_frame(_wire.FrameType.CHALLENGE, nonce + f"{self._name}\0{self._incarnation}".encode())
        await send_views(conn, [challenge], self._limits.stall_timeout)
        frame_type, payload = await self._read_frame(conn, None)
        if frame_type is not _wire.FrameType.AUTH or not isinstance(payload, _wire.Auth):
            raise ProtocolError(f"expected AUTH, got {frame_type.name}")
        expected = _wire.client_mac(self._secret, nonce, payload.nonce, payload.client_name)
        if not hmac.compare_digest(expected, payload.mac):
            log.warning("tcp server %s: authentication failed for %s (%r)", self._name, where, payload.client_name)
            fail = _wire.encode_frame(_wire.FrameType.AUTH_FAIL, b"authentication failed")
            await send_views(conn, [fail], self._limits.stall_timeout)
            return None
        proof = _wire.server_mac(self._secret, nonce, payload.nonce)
        await send_views(conn, [_wire.encode_frame(_wire.FrameType.AUTH_OK, proof)], self._limits.stall_timeout)
        name = payload.client_name or where
        return Client(identity.name if identity is not None else name, name)

    async def _serve_requests(self, conn: socket.socket, client: Client) -> None:
        while True:
            frame_type, payload = await self._read_frame(conn, self._limits.idle_timeout)
            if frame_type is _wire.FrameType.READ and isinstance(payload, _wire.ReadRequest):
                await self._serve_read(conn, client.identity, payload)
            elif frame_type is _wire.FrameType.WRITE and isinstance(payload, _wire.WriteRequest):
                await serve_write(conn, client.identity, payload, self._regions(), self._limits.stall_timeout,
                                  self._name, authorize=self._authorize_write)
            elif frame_type is _wire.FrameType.NOTIFY and isinstance(payload, bytes):
                # queued without a scheduling pass (the stream is unbounded): the ack leaves
                # on this loop turn, and it still only ever follows the delivery
                self._notifications.send_nowait(Notification(client.name, payload))
                ack = _wire.encode_frame(_wire.FrameType.NOTIFY_ACK)
                await send_views(conn, [ack], self._limits.stall_timeout)
            else:
                raise ProtocolError(f"unexpected {frame_type.name} frame from a client")

    async def _serve_read(self, conn: socket.socket, client: str, req: _wire.ReadRequest) -> None:
        entries = self._regions()
        problem = bounds_problem(req.src_region, req.src_offset, req.length, [r.length for r, _ in entries],
                                 side="source")
        if problem is not None:
            log.warning("tcp server %s: refused READ %d from %s, no byte served: %s", self._name, req.seq, client, problem)
            err = _wire.encode_read_error(req.seq, problem)
            await send_views(conn, [err], self._limits.stall_timeout)
            return
        refused = self._authorize(client, req.src_region, req.src_offset, req.length) if self._authorize else None
        if refused is not None:
            log.warning("tcp server %s: refused READ %d from %s, no byte served: %s", self._name, req.seq, client,
                        refused)
            await send_views(conn, [_wire.encode_read_error(req.seq, refused)], self._limits.stall_timeout)
            return
        region, offset, length = merge_ranges(req.src_region, req.src_offset, req.length)
        total = int(length.sum()) if len(length) else 0
        log.debug("tcp server %s: READ %d from %s: %d rows, %d runs, %d bytes", self._name, req.seq, client, len(req.length), len(length), total)
        views = [v for _, v in entries]
        await send_runs(conn, views, (region, offset, length), self._limits.stall_timeout,
                        head=_wire.encode_read_ok(req.seq, total))


def tune_socket(sock: socket.socket) -> None:
    """No Nagle (a request frame must leave at once); the kernel keeps sizing the buffers.

    Why not fixed 4 MiB ``SO_SNDBUF`` / ``SO_RCVBUF`` (which beat the defaults for 64 KiB
    ``recv_into`` pieces in an early loopback test): they switch autotuning off, and with
    them a READ reply's sender copied ~8 MiB before the reader's first byte (+1.5 ms to
    the first payload byte of a 25 MB reply on loopback); end to end, autotuned buffers
    were faster for that 25 MB read and as fast for 37-125 MB ones (docs/performance.md,
    "TCP: the small-request gap") — the raw-socket ceiling uses them too.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def close_socket(sock: socket.socket) -> None:
    """Wake any task waiting on the socket, then close it."""
    if sock.fileno() < 0:
        return
    try:
        anyio.notify_closing(sock)
    except Exception:  # notify_closing needs a running loop; closing must still happen
        pass
    sock.close()


"""The reading (D) side of the TCP transport: authenticated connections and a small pool.

A connection carries one request at a time (the reply is a raw byte stream), so
concurrency comes from several connections per peer. A connection whose stream position
became unknown — cancelled mid-reply, peer error, timeout — is closed, never reused; the
pool opens a fresh one on the next read. A fresh connection to a peer that restarted on
the same address reaches *another* process with other memory: its CHALLENGE carries the
server's incarnation, and a mismatch with the one in the metadata is refused with
:class:`~hybridxfer.errors.PeerRestartedError` before a single READ is sent.

With TLS configured every connection starts with a TLS 1.3 handshake: the server's
certificate must come from our CA and name the host we dialled (the one in its
metadata), and we present ours. A refusal either way is an
:class:`~hybridxfer.errors.AuthenticationError` before any frame is exchanged.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

import anyio
import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors, merge_ranges
from hybridxfer.errors import (
    AuthenticationError,
    BrokenTransportError,
    ConnectError,
    GrantRefusedError,
    PeerRestartedError,
    ProtocolError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.transport._grants import REFUSAL_PREFIX
from hybridxfer.transport._tls import TlsContexts, TlsIdentity, tls_refusal
from hybridxfer.transport.tcp import _wire
from hybridxfer.transport.tcp._io import (
    recv_exactly,
    recv_exactly_blocking,
    recv_runs_blocking,
    run_blocking,
    send_views,
    send_views_blocking,
    tls_handshake,
    wrap_tls,
)
from hybridxfer.transport.tcp._server import close_socket, tune_socket

__all__ = ["ClientOptions", "TcpConnection", "TcpPeer"]

log = logging.getLogger("hybridxfer.transport.tcp.client")

Int64Array = npt.NDArray[np.int64]


@attrs.frozen
class ClientOptions:
    """What a D side needs to open connections to one peer."""

    client_name: str
    secret: bytes = attrs.field(repr=False)
    connect_timeout: float = 10.0
    #: Seconds of no progress on a socket before the peer is considered dead.
    stall_timeout: float = 30.0
    #: TLS contexts: every connection is TLS 1.3 with both certificates verified.
    tls: TlsContexts | None = attrs.field(default=None, repr=False)


class TcpConnection:
    """One authenticated socket to a peer's server."""

    def __init__(self, sock: socket.socket, options: ClientOptions) -> None:
        self._sock = sock
        self._options = options
        self._seq = 0
        #: The server certificate's identity (None without TLS).
        self.identity: TlsIdentity | None = None

    @classmethod
    async def open(cls, host: str, port: int, options: ClientOptions, incarnation: str = "") -> TcpConnection:
        """Connect and authenticate both ways. Cancellation closes the half-open socket.

        ``incarnation``: the server's, as its metadata published it; a server answering with
        another raises :class:`PeerRestartedError` (nothing sent but the connect)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            tune_socket(sock)
            with anyio.fail_after(options.connect_timeout):
                code = sock.connect_ex((host, port))
                if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                    await anyio.wait_writable(sock)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise ConnectError(f"cannot connect to {host}:{port}: {os.strerror(code)}")
                conn = cls(sock, options)
                if options.tls is not None:
                    sock = conn._sock = wrap_tls(sock, options.tls.client, server_side=False, server_hostname=host)
                    await conn._start_tls(host, port)
                await conn._authenticate(host, port, incarnation)
            return conn
        except (PeerRestartedError, AuthenticationError):
            close_socket(sock)
            raise
        except TimeoutError as exc:
            close_socket(sock)
            raise ConnectError(f"connecting to {host}:{port} timed out") from exc
        except (BrokenTransportError, ProtocolError, OSError) as exc:
            close_socket(sock)
            refused = tls_refusal(exc)
            if refused:
                raise AuthenticationError(f"TLS: {host}:{port} {refused}") from exc
            raise ConnectError(f"handshake with {host}:{port} failed: {exc}") from exc
        except BaseException:
            close_socket(sock)
            raise

    async def _start_tls(self, host: str, port: int) -> None:
        assert isinstance(self._sock, ssl.SSLSocket)
        try:
            await tls_handshake(self._sock, self._options.stall_timeout)
        except ssl.SSLCertVerificationError as exc:
            raise AuthenticationError(f"TLS: the certificate of {host}:{port} is not acceptable: "
                                      f"{exc.verify_message or exc.reason}") from exc
        self.identity = TlsIdentity.of(self._sock)

    async def _frame(self) -> tuple[_wire.FrameType, _wire.Payload]:
        stall = self._options.stall_timeout
        frame_type, length = _wire.parse_header(await recv_exactly(self._sock, _wire.HEADER.size, stall))
        payload = await recv_exactly(self._sock, length, stall) if length else b""
        return frame_type, _wire.decode_payload(frame_type, payload)

    async def _authenticate(self, host: str, port: int, incarnation: str) -> None:
        opts = self._options
        frame_type, challenge = await self._frame()
        if not isinstance(challenge, _wire.Challenge):
            raise ProtocolError(f"expected CHALLENGE, got {frame_type.name}")
        if incarnation and challenge.incarnation != incarnation:
            raise PeerRestartedError(f"the server at {host}:{port} restarted", peer=challenge.name,
                                     old_incarnation=incarnation, new_incarnation=challenge.incarnation)
        nonce = os.urandom(_wire.NONCE_BYTES)
        mac = _wire.client_mac(opts.secret, challenge.nonce, nonce, opts.client_name)
        auth = _wire.encode_frame(_wire.FrameType.AUTH, nonce + mac + opts.client_name.encode())
        await send_views(self._sock, [auth], opts.stall_timeout)
        frame_type, reply = await self._frame()
        if frame_type is _wire.FrameType.AUTH_FAIL:
            raise AuthenticationError(f"peer {challenge.name!r} at {host}:{port} refused our secret")
        if not isinstance(reply, bytes) or frame_type is not _wire.FrameType.AUTH_OK:
            raise ProtocolError(f"expected AUTH_OK, got {frame_type.name}")
        if not hmac.compare_digest(reply, _wire.server_mac(opts.secret, challenge.nonce, nonce)):
            raise AuthenticationError(f"peer at {host}:{port} does not know the shared secret")

    async def read(self, descriptors: Descriptors, region_views: Sequence[memoryview]) -> None:
        """One READ round trip: the source columns go out as they are, the reply's bytes land
        straight in ``region_views`` at the destination columns (no intermediate copy).

        The reply is one byte stream in row order, so destination rows that continue each
        other are received as one buffer (:func:`~hybridxfer.descriptors.merge_ranges`).
        The whole exchange — READ out, reply frame in, payload in — runs in one worker-thread
        call (:func:`~._io.run_blocking`; receives release the GIL, so reads from several P
        ranks overlap): one event-loop hop per read, none between the reply frame and its
        bytes. A refusal (``READ_ERR``) raises :class:`TransferError` and leaves the
        connection usable; anything else raises and leaves it unusable (the caller closes it).
        """
        d = descriptors
        self._seq += 1
        seq = self._seq
        request = _wire.encode_read_request(seq, d.src_region, d.src_offset, d.length)
        dst_runs = merge_ranges(d.dst_region, d.dst_offset, d.length)
        work = functools.partial(self._read_blocking, request, seq, d.total_bytes, region_views, dst_runs)
        refused = await run_blocking(self._sock, work, self._options.stall_timeout)
        if refused is not None:
            if refused.reason.startswith(REFUSAL_PREFIX):
                raise GrantRefusedError(f"peer refused the read, no bytes moved: {refused.reason}")
            raise TransferError(f"peer refused the read, no bytes moved: {refused.reason}")

    def _read_blocking(self, request: Sequence[bytes], seq: int, total: int, region_views: Sequence[memoryview],
                       dst_runs: tuple[Int64Array, Int64Array, Int64Array]) -> _wire.ReadError | None:
        """The READ exchange on the worker thread; the refusal, if the peer refused."""
        send_views_blocking(self._sock, request)
        frame_type, length = _wire.parse_header(recv_exactly_blocking(self._sock, _wire.HEADER.size))
        reply = _wire.decode_payload(frame_type, recv_exactly_blocking(self._sock, length) if length else b"")
        if isinstance(reply, _wire.ReadError) and reply.seq == seq:
            return reply
        if not isinstance(reply, _wire.ReadOk) or reply.seq != seq:
            raise ProtocolError(f"expected READ_OK for request {seq}, got {frame_type.name}")
        if reply.total != total:
            raise ProtocolError(f"peer announced {reply.total} bytes, we asked for {total}")
        recv_runs_blocking(self._sock, region_views, dst_runs)
        return None

    async def notify(self, message: bytes) -> None:
        frame = _wire.encode_frame(_wire.FrameType.NOTIFY, message)
        await send_views(self._sock, [frame], self._options.stall_timeout)
        frame_type, _ = await self._frame()
        if frame_type is not _wire.FrameType.NOTIFY_ACK:
            raise ProtocolError(f"expected NOTIFY_ACK, got {frame_type.name}")

    def close(self) -> None:
        close_socket(self._sock)


class TcpPeer:
    """A pool of up to ``max_connections`` connections to one peer's server."""

    def __init__(self, *, name: str, region_names: Sequence[str], region_lengths: Sequence[int],
                 host: str, port: int, options: ClientOptions, max_connections: int,
                 incarnation: str = "") -> None:
        self._name = name
        self.incarnation = incarnation
        self._region_names = tuple(region_names)
        self.region_lengths = tuple(region_lengths)
        self.host, self.port = host, port
        self._options = options
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._idle: list[TcpConnection] = []
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def region_names(self) -> Sequence[str]:
        return self._region_names

    @property
    def max_connections(self) -> int:
        return int(self._limiter.total_tokens)

    async def warm_up(self) -> None:
        """Open and authenticate one connection now, so connect() fails early and typed."""
        self._idle.append(await TcpConnection.open(self.host, self.port, self._options, self.incarnation))

    async def _acquire(self) -> TcpConnection:
        if self._idle:
            return self._idle.pop()
        return await TcpConnection.open(self.host, self.port, self._options, self.incarnation)

    async def read(self, descriptors: Descriptors, region_views: Sequence[memoryview]) -> None:
        """Run one READ on a pooled connection (see :meth:`exchange` for the errors)."""
        await self.exchange(lambda conn: conn.read(descriptors, region_views))

    async def exchange(self, operation: Callable[[TcpConnection], Awaitable[None]]) -> None:
        """Run one request/reply ``operation`` (a READ, a WRITE) on a pooled connection.
        Cancellation closes that connection only.

        Errors keep their class: a refusal is a :class:`TransferError` (the connection
        stays pooled), a peer that cannot be reached a :class:`ConnectError`, a connection
        that died a :class:`BrokenTransportError` (or :class:`PeerRestartedError` when a
        parked connection died because another incarnation now answers), a malformed
        reply a :class:`ProtocolError`, a stall past ``stall_timeout`` a
        :class:`TransferTimeout`.
        """
        async with self._limiter:
            if self._closed:
                raise BrokenTransportError(f"connection pool to {self._name!r} is closed")
            pooled = bool(self._idle)
            conn = await self._acquire()
            try:
                await operation(conn)
            except TransferError:
                self._release(conn)
                raise
            except BrokenTransportError as exc:
                conn.close()
                if pooled:  # an idle connection that died while parked: see who answers now
                    await self._check_restarted(exc)
                raise
            except ProtocolError:
                conn.close()
                raise
            except TimeoutError as exc:
                conn.close()
                raise TransferTimeout(f"peer {self._name!r} stalled for {self._options.stall_timeout}s") from exc
            except BaseException:
                conn.close()
                raise
            self._release(conn)

    async def _check_restarted(self, broken: BrokenTransportError) -> None:
        """After a parked connection broke: raise :class:`PeerRestartedError` if another
        incarnation now answers at the address; otherwise return (the caller raises
        ``broken``). The probe connection, if any, joins the pool: nothing was read on it."""
        try:
            conn = await TcpConnection.open(self.host, self.port, self._options, self.incarnation)
        except PeerRestartedError as exc:
            raise exc from broken
        except ConnectError:
            return
        self._release(conn)

    async def notify(self, message: bytes) -> None:
        """Deliver one notification and wait for the peer's ack. Cancellation: maybe delivered.

        Raises :class:`ConnectError` (peer unreachable), :class:`BrokenTransportError`
        (the connection died or stalled) or :class:`ProtocolError`.
        """
        async with self._limiter:
            if self._closed:
                raise BrokenTransportError(f"connection pool to {self._name!r} is closed")
            conn = await self._acquire()
            try:
                await conn.notify(message)
            except (BrokenTransportError, ProtocolError):
                conn.close()
                raise
            except TimeoutError as exc:
                conn.close()
                raise BrokenTransportError(f"notification to {self._name!r} stalled: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            self._release(conn)

    def _release(self, conn: TcpConnection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

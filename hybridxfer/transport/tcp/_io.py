"""Socket I/O for the TCP transport, zero-copy in both directions.

Why raw sockets rather than anyio streams: a stream's ``receive()`` returns fresh
``bytes`` (one extra copy of every payload byte); here the receiver ``recv_into`` /
``recvmsg_into`` its destination memory and the sender ``sendmsg`` s scatter-gather views
of registered memory. Each call first *tries* the syscall and only waits for readiness
on ``EAGAIN``, so a busy stream costs one syscall per kernel buffer's worth of data, not
an event-loop round trip per chunk. Each wait is bounded by ``stall_timeout``: a peer that
makes no progress for that long is treated as dead (``TimeoutError``).

Serving, notifications and control frames run non-blocking on the event loop. A reader's
whole READ exchange — request out, reply frame and payload in — runs on a worker thread
(:func:`run_blocking` with the ``*_blocking`` helpers): one loop -> thread -> loop hop per
read and no readiness wait between the reply frame and its bytes; receives there release
the GIL, so replies from several P ranks land in parallel.

Under TLS the same helpers take the :class:`ssl.SSLSocket` instead (every caller — reads,
writes, notifications — goes through them, so TLS covers every byte). ``SSLSocket`` has
``recv_into`` but no ``sendmsg``/``recvmsg_into``: it receives straight into the
destination view as well (decryption writes there, no extra copy), and sends view by
view, runs of small views first joined into one buffer so each TLS record is full. The
plain path is unchanged.

Cancellation: any of these may stop part-way; the caller must then treat the socket's
stream position as unknown and close it.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import BrokenTransportError
from hybridxfer.transport._protocol import MemoryRegion

__all__ = ["IOV_MAX", "recv_exactly", "recv_exactly_blocking", "recv_into_views", "recv_runs_blocking",
           "recv_runs_in_thread", "region_view", "run_blocking", "send_runs", "send_views", "send_views_blocking",
           "tls_handshake", "wrap_tls"]

Int64Array = npt.NDArray[np.int64]
_T = TypeVar("_T")

#: Linux's IOV_MAX; ``sendmsg`` / ``recvmsg_into`` refuse more buffers per call.
IOV_MAX = 1024
# Syscalls in a row that found data ready before we yield to the loop anyway (fairness).
_SPINS_PER_CHECKPOINT = 64
#: Most bytes handed to one TLS read or write (OpenSSL lengths are C ints).
_TLS_CHUNK = 16 << 20
#: Views shorter than this are joined with their neighbours before a TLS write, up to
#: this many bytes per write (one short record per tiny view would cost a syscall each).
_TLS_JOIN = 256 << 10


class _WantWrite(Exception):
    """A TLS read that must first write (a key update's reply): wait until writable."""


def wrap_tls(sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
             server_hostname: str | None = None) -> ssl.SSLSocket:
    """Wrap a connected non-blocking socket for TLS; ``sock`` is detached (use the result).
    Nothing is sent until :func:`tls_handshake`."""
    return context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname,
                               do_handshake_on_connect=False, suppress_ragged_eofs=True)


async def tls_handshake(sock: ssl.SSLSocket, stall_timeout: float | None) -> None:
    """Run the TLS handshake without blocking the loop. Raises :class:`ssl.SSLError`
    (refused or unverifiable certificate, not TLS), ``OSError`` or ``TimeoutError``."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _wait_readable(sock, stall_timeout)
        except ssl.SSLWantWriteError:
            await _wait_writable(sock, stall_timeout)


def region_view(region: MemoryRegion) -> memoryview:
    """A writable byte view of a registered host region (no copy; the owner keeps it alive)."""
    if region.length == 0:
        return memoryview(bytearray(0))
    buf = (ctypes.c_char * region.length).from_address(region.address)
    return memoryview(buf).cast("B")


async def _wait_readable(sock: socket.socket, stall_timeout: float | None) -> None:
    if stall_timeout is None:
        await anyio.wait_readable(sock)
    else:
        with anyio.fail_after(stall_timeout):
            await anyio.wait_readable(sock)


async def _wait_writable(sock: socket.socket, stall_timeout: float | None) -> None:
    if stall_timeout is None:
        await anyio.wait_writable(sock)
    else:
        with anyio.fail_after(stall_timeout):
            await anyio.wait_writable(sock)


async def recv_exactly(sock: socket.socket, size: int, stall_timeout: float | None) -> bytes:
    """Receive exactly ``size`` bytes (small control frames only: this allocates)."""
    buf = bytearray(size)
    await recv_into_views(sock, [memoryview(buf)], stall_timeout)
    return bytes(buf)


def _ends(views: Sequence[memoryview]) -> list[int]:
    ends, total = [], 0
    for v in views:
        total += v.nbytes
        ends.append(total)
    return ends


def _recv_step(sock: socket.socket, views: Sequence[memoryview], ends: list[int], pos: int, flags: int = 0) -> int:
    """One scatter receive into ``views`` from byte ``pos`` on; returns the bytes received.
    ``flags`` go to a plain socket's receive (TLS reads take none).

    ``BlockingIOError`` (non-blocking socket, nothing ready) and ``TimeoutError`` (blocking
    socket, stalled peer) pass through for the caller's own waiting policy.
    """
    i = bisect.bisect_right(ends, pos)
    start = ends[i - 1] if i else 0
    first = views[i][pos - start :]
    try:
        if isinstance(sock, ssl.SSLSocket):
            # read(), not recv_into(): on an unwrapped socket recv_into would fall back to
            # the raw stream and write ciphertext; read() refuses (ValueError) instead.
            # (typeshed types the buffer form as returning bytes; it returns the count)
            n = cast(int, sock.read(min(first.nbytes, _TLS_CHUNK), cast(bytearray, first)))
        elif i + 1 == len(views):
            n = sock.recv_into(first, 0, flags)
        else:
            n = sock.recvmsg_into([first, *views[i + 1 : i + IOV_MAX]], 0, flags)[0]
    except ssl.SSLWantReadError:
        raise BlockingIOError from None
    except ssl.SSLWantWriteError:
        raise _WantWrite from None
    except (BlockingIOError, TimeoutError):
        raise
    except (OSError, ValueError) as exc:
        raise BrokenTransportError(f"receive failed: {exc}") from exc
    if n == 0:
        raise BrokenTransportError(f"peer closed the connection after {pos} of {ends[-1]} bytes")
    return n


async def recv_into_views(
    sock: socket.socket, views: Sequence[memoryview], stall_timeout: float | None
) -> None:
    """Fill ``views`` in order from the socket (scatter receive, no intermediate buffer).

    Raises :class:`BrokenTransportError` if the peer closes before every byte arrived.
    """
    ends = _ends(views)
    total = ends[-1] if ends else 0
    pos = 0
    spins = 0
    waited = False
    while pos < total:
        if spins >= _SPINS_PER_CHECKPOINT:
            spins = 0
            await anyio.lowlevel.checkpoint()
        spins += 1
        try:
            pos += _recv_step(sock, views, ends, pos)
        except BlockingIOError:
            await _wait_readable(sock, stall_timeout)
            spins, waited = 0, True
        except _WantWrite:
            await _wait_writable(sock, stall_timeout)
            spins, waited = 0, True
    if not waited:
        # Every byte was already buffered: still give other tasks (and cancellation) a
        # turn. After a wait that turn was taken already; one more would cost a loop pass.
        await anyio.lowlevel.checkpoint()


async def send_views(
    sock: socket.socket, views: Sequence[memoryview | bytes], stall_timeout: float | None
) -> None:
    """Send ``views`` in order with ``sendmsg`` (≤ IOV_MAX buffers a call), partial sends handled."""
    mvs = [memoryview(v) if isinstance(v, bytes) else v for v in views]
    if isinstance(sock, ssl.SSLSocket):
        for chunk in _tls_chunks(mvs):
            await _tls_write(sock, chunk, stall_timeout)
        await anyio.lowlevel.checkpoint()
        return
    ends = _ends(mvs)
    total = ends[-1] if ends else 0
    pos = 0
    spins = 0
    waited = False
    while pos < total:
        if spins >= _SPINS_PER_CHECKPOINT:
            spins = 0
            await anyio.lowlevel.checkpoint()
        spins += 1
        i = bisect.bisect_right(ends, pos)
        start = ends[i - 1] if i else 0
        try:
            n = sock.sendmsg([mvs[i][pos - start :], *mvs[i + 1 : i + IOV_MAX]])
        except BlockingIOError:
            await _wait_writable(sock, stall_timeout)
            spins, waited = 0, True
            continue
        except OSError as exc:
            raise BrokenTransportError(f"send failed: {exc}") from exc
        pos += n
    if not waited:  # as in recv_into_views: one turn for the others, not two
        await anyio.lowlevel.checkpoint()


def _tls_chunks(views: Sequence[memoryview]) -> list[memoryview]:
    """What to hand to TLS writes: long views sliced to ``_TLS_CHUNK``, runs of short ones joined."""
    out: list[memoryview] = []
    short: list[memoryview] = []
    short_bytes = 0

    def flush() -> None:
        nonlocal short_bytes
        if short:
            out.append(memoryview(b"".join(short)) if len(short) > 1 else short[0])
            short.clear()
            short_bytes = 0

    for v in views:
        if v.nbytes < _TLS_JOIN:
            short.append(v)
            short_bytes += v.nbytes
            if short_bytes >= _TLS_JOIN:
                flush()
            continue
        flush()
        out.extend(v[a : a + _TLS_CHUNK] for a in range(0, v.nbytes, _TLS_CHUNK))
    flush()
    return out


async def _tls_write(sock: ssl.SSLSocket, data: memoryview, stall_timeout: float | None) -> None:
    """Write all of ``data``. After a want-write the same bytes are offered again, as
    OpenSSL requires of a retried write."""
    pos = 0
    while pos < data.nbytes:
        try:
            pos += sock.write(data[pos:])
        except ssl.SSLWantWriteError:
            await _wait_writable(sock, stall_timeout)
        except ssl.SSLWantReadError:
            await _wait_readable(sock, stall_timeout)
        except (OSError, ValueError) as exc:
            raise BrokenTransportError(f"send failed: {exc}") from exc


def _chunk_views(
    region_views: Sequence[memoryview], region: list[int], start: list[int], end: list[int], a: int, b: int
) -> list[memoryview]:
    return [region_views[r][s:e] for r, s, e in zip(region[a:b], start[a:b], end[a:b], strict=True)]


async def send_runs(
    sock: socket.socket,
    region_views: Sequence[memoryview],
    runs: tuple[Int64Array, Int64Array, Int64Array],
    stall_timeout: float | None,
    head: bytes = b"",
) -> None:
    """Send ``head`` (a reply's control frame), then (region, offset, length) runs of
    registered memory, building views per chunk.

    ``head`` goes out in the same ``sendmsg`` as the first views: the receiver gets the
    frame and the first payload bytes from one segment, not two. Views are made
    ``IOV_MAX`` at a time, interleaved with the sends, so the receiver is already draining
    while we slice the next chunk (measured: building 65k views up front cost as much as
    sending them).
    """
    region, offset, length = runs
    r, s, e = region.tolist(), offset.tolist(), (offset + length).tolist()
    if not r:
        if head:
            await send_views(sock, [head], stall_timeout)
        return
    for a in range(0, len(r), IOV_MAX - 1):
        views: list[memoryview | bytes] = []
        if head and not a:
            views.append(head)
        views.extend(_chunk_views(region_views, r, s, e, a, a + IOV_MAX - 1))
        await send_views(sock, views, stall_timeout)



def send_views_blocking(sock: socket.socket, views: Sequence[memoryview | bytes]) -> None:
    """:func:`send_views` for :func:`run_blocking`'s worker thread.

    ``TimeoutError`` (no progress for the stall timeout); other failures raise
    :class:`BrokenTransportError`."""
    mvs = [memoryview(v) if isinstance(v, bytes) else v for v in views]
    try:
        if isinstance(sock, ssl.SSLSocket):
            for chunk in _tls_chunks(mvs):
                sock.sendall(chunk)
            return
        ends = _ends(mvs)
        total = ends[-1] if ends else 0
        pos = 0
        while pos < total:
            i = bisect.bisect_right(ends, pos)
            start = ends[i - 1] if i else 0
            pos += sock.sendmsg([mvs[i][pos - start :], *mvs[i + 1 : i + IOV_MAX]])
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, TimeoutError) as exc:
        raise TimeoutError("send made no progress within the stall timeout") from exc
    except (OSError, ValueError) as exc:
        raise BrokenTransportError(f"send failed: {exc}") from exc


def _blocking_step(sock: socket.socket, views: Sequence[memoryview], ends: list[int], pos: int) -> int:
    """:func:`_recv_step` on a blocking socket with ``MSG_WAITALL``: the kernel fills all
    (up to ``IOV_MAX``) views in one call, the GIL released throughout, instead of one
    Python round per arriving segment — which, with two P ranks' replies landing in one
    process, let one receiving thread hold off the other. A call returns early only when
    the kernel timeout (``SO_RCVTIMEO``) passes: with some bytes, we go on; with none
    (EAGAIN), the peer stalled."""
    try:
        return _recv_step(sock, views, ends, pos, socket.MSG_WAITALL)
    except (BlockingIOError, _WantWrite) as exc:
        raise TimeoutError(f"receive made no progress within the stall timeout ({pos} of {ends[-1]} bytes)") from exc


def recv_exactly_blocking(sock: socket.socket, size: int) -> bytes:
    """:func:`recv_exactly` for :func:`run_blocking`'s worker thread."""
    buf = bytearray(size)
    views = [memoryview(buf)]
    ends = [size]
    pos = 0
    while pos < size:
        pos += _blocking_step(sock, views, ends, pos)
    return bytes(buf)


def recv_runs_blocking(
    sock: socket.socket,
    region_views: Sequence[memoryview],
    runs: tuple[Int64Array, Int64Array, Int64Array],
) -> None:
    """Receive into (region, offset, length) runs of registered memory, ``IOV_MAX`` views at a
    time, on :func:`run_blocking`'s worker thread."""
    region, offset, length = runs
    r, s, e = region.tolist(), offset.tolist(), (offset + length).tolist()
    for a in range(0, len(r), IOV_MAX):
        views = _chunk_views(region_views, r, s, e, a, a + IOV_MAX)
        ends = _ends(views)
        total = ends[-1] if ends else 0
        pos = 0
        while pos < total:
            pos += _blocking_step(sock, views, ends, pos)


async def recv_runs_in_thread(
    sock: socket.socket,
    region_views: Sequence[memoryview],
    runs: tuple[Int64Array, Int64Array, Int64Array],
    stall_timeout: float | None,
) -> None:
    """Receive a READ reply into its runs on a worker thread, so reads from several peers proceed in parallel
    (``recv_into`` releases the GIL) and the event loop stays free. Cancellation: as
    :func:`run_blocking`."""
    await run_blocking(sock, functools.partial(recv_runs_blocking, sock, region_views, runs), stall_timeout)


async def run_blocking(sock: socket.socket, work: Callable[[], _T], stall_timeout: float | None) -> _T:
    """Run ``work`` — blocking I/O on ``sock`` only — on a worker thread, the socket in
    blocking mode with ``stall_timeout``; its result or exception is ours.

    Why: a whole exchange (request out, reply frame and payload in) in one thread call
    costs one event-loop -> thread -> event-loop hop, where the same steps on the loop
    cost a readiness wait per step plus the hop for the payload.

    The stall timeout is the kernel's (``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on a plain blocking
    socket), not Python's ``settimeout``: with the latter every ``recv`` is a ``poll`` and then
    the receive, twice the syscalls and GIL hand-offs of the raw-socket path for a busy
    stream. (The options do nothing to the non-blocking socket the event loop uses.)

    Cancellation shuts the socket down, which wakes the thread, and waits (shielded, a few
    seconds at most) until it has stopped writing into destination memory; the caller
    must then close the connection.
    """
    stopped = threading.Event()
    result: list[_T] = []
    # A cancellation can come before a worker picked the call up (then it never runs):
    # whether ``work`` started is decided under this lock, once.
    lock = threading.Lock()
    state = {"started": False, "abandoned": False}

    def guarded() -> None:
        with lock:
            if state["abandoned"]:
                return
            state["started"] = True
        try:
            result.append(work())
        finally:
            stopped.set()

    sock.settimeout(None)
    _set_kernel_timeouts(sock, stall_timeout)
    try:
        await anyio.to_thread.run_sync(guarded, abandon_on_cancel=True)
        return result[0]
    except BaseException:
        with lock:
            state["abandoned"] = True
            started = state["started"]
        with contextlib.suppress(OSError):
            # the plain socket's shutdown: SSLSocket.shutdown would also drop its TLS state
            # under the thread's feet
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        if started:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                while not stopped.is_set():  # polled: waiting on a second thread would park one more
                    await anyio.sleep(0.001)
        raise
    finally:
        if sock.fileno() >= 0:
            sock.setblocking(False)


def _set_kernel_timeouts(sock: socket.socket, seconds: float | None) -> None:
    """Bound each blocking send / receive on ``sock`` (None or 0: no bound)."""
    whole = int(seconds or 0)
    micro = int(((seconds or 0) - whole) * 1_000_000)
    if seconds and not whole and not micro:
        micro = 1  # a positive timeout below 1 µs must not turn into "forever"
    tv = struct.pack("@ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

"""Hostile TCP clients a port scanner or a broken peer produces, beyond test_tcp_security.py.

Why: the server serves every connection from one event loop, so "one misbehaving client
cannot stall others" has to be shown with the misbehaviour running *while* a legitimate
client transfers — slowloris (one byte at a time), a reader that never drains its
socket, a flood of garbage, a READ pipelined behind a wrong MAC, and a full connection
table. Each legitimate transfer is byte-exact; nothing is served to the hostile ones.
"""

from __future__ import annotations

import logging
import os

import anyio
import numpy as np
import pytest

from hybridxfer.errors import ConnectError, TransportError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport.tcp import TcpTransport, _wire

SECRET = "hostile-clients-secret"
SIZE = 1 << 20


async def _legit_transfers(d: TcpTransport, p: TcpTransport, dst: np.ndarray, src: np.ndarray, count: int) -> None:
    peer = await d.connect(p.local_metadata())
    for _ in range(count):
        dst[:] = 0
        await d.read(peer, batch(0, 0, 0, 0, SIZE))
        assert np.array_equal(dst, src)


async def _authenticate(stream: anyio.abc.SocketStream, secret: str) -> None:
    challenge = b""
    while len(challenge) < _wire.HEADER.size:
        challenge += await stream.receive()
    _, length = _wire.parse_header(challenge[: _wire.HEADER.size])
    while len(challenge) < _wire.HEADER.size + length:
        challenge += await stream.receive()
    ch = _wire.decode_payload(_wire.FrameType.CHALLENGE, challenge[_wire.HEADER.size : _wire.HEADER.size + length])
    assert isinstance(ch, _wire.Challenge)
    nonce = os.urandom(32)
    mac = _wire.client_mac(secret.encode(), ch.nonce, nonce, "hostile")
    await stream.send(_wire.encode_frame(_wire.FrameType.AUTH, nonce + mac + b"hostile"))


def _world(**server: float) -> tuple[TcpTransport, TcpTransport, np.ndarray, np.ndarray]:
    src = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8)
    dst = np.zeros(SIZE, np.uint8)
    return TcpTransport(name="p", secret=SECRET, **server), TcpTransport(name="d", secret=SECRET), src, dst  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_slowloris_handshake_is_cut_and_others_served(caplog: pytest.LogCaptureFixture) -> None:
    """Clients dribbling one byte every 0.25 s into the handshake are closed at the
    handshake deadline; meanwhile a legitimate client completes 20 transfers."""
    caplog.set_level(logging.WARNING, "hybridxfer.transport.tcp.server")
    p, d, src, dst = _world(handshake_timeout=1.0)
    closed_after: list[float] = []

    async def slowloris() -> None:
        stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
        started = anyio.current_time()
        async with stream:
            try:
                for byte in b"HX" + b"\x01" * 40:
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.25)
                    with anyio.move_on_after(0.001):
                        while await stream.receive():
                            pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        closed_after.append(anyio.current_time() - started)

    with anyio.fail_after(30):
        async with p, d, anyio.create_task_group() as tg:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            for _ in range(3):
                tg.start_soon(slowloris)
            await _legit_transfers(d, p, dst, src, 20)
    assert len(closed_after) == 3 and max(closed_after) < 8, closed_after
    assert "stalled past its deadline" in caplog.text


@pytest.mark.anyio
async def test_reader_that_never_drains_only_stalls_itself(caplog: pytest.LogCaptureFixture) -> None:
    """An authenticated client asks for 1 MiB forty times and never reads the replies: its
    send buffer fills, the stall deadline closes it, and other clients are served
    throughout."""
    caplog.set_level(logging.WARNING, "hybridxfer.transport.tcp.server")
    p, d, src, dst = _world(stall_timeout=1.0)
    with anyio.fail_after(30):
        async with p, d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
            async with stream:
                await _authenticate(stream, SECRET)
                req = b"".join(_wire.encode_read_request(
                    1, np.zeros(1, np.int64), np.zeros(1, np.int64), np.full(1, SIZE, np.int64)))
                for _ in range(40):
                    await stream.send(req)
                await _legit_transfers(d, p, dst, src, 10)
                with anyio.fail_after(10):
                    while "stalled past its deadline" not in caplog.text:
                        await anyio.sleep(0.1)
                await _legit_transfers(d, p, dst, src, 1)


@pytest.mark.anyio
async def test_garbage_flood_during_transfers() -> None:
    """Fifty clients sending malformed frames (bad magic, unknown version, absurd and
    overflowing lengths, truncated bodies) while a legitimate client transfers: the server
    survives, serves them nothing, and every legitimate byte is exact."""
    hostile = [
        b"\x16\x03\x01\x02\x00" + os.urandom(200),  # a TLS ClientHello-ish probe
        _wire.HEADER.pack(b"HX", 77, 2, 10),
        _wire.HEADER.pack(b"HX", _wire.VERSION, 2, 2**64 - 1),
        _wire.HEADER.pack(b"HX", _wire.VERSION, 2, 2**31) + b"x" * 100,
        os.urandom(64),
    ]
    p, d, src, dst = _world(handshake_timeout=2.0)
    leaked: list[bytes] = []

    async def one(payload: bytes) -> None:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
        except OSError:
            return
        async with stream:
            try:
                await stream.send(payload)
                with anyio.move_on_after(3):
                    while True:
                        leaked.append(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass

    with anyio.fail_after(40):
        async with p, d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, hostile[i % len(hostile)])
                await _legit_transfers(d, p, dst, src, 20)
    data = b"".join(leaked)
    assert src[:64].tobytes() not in data and len(data) < 50 * 400


@pytest.mark.anyio
async def test_read_pipelined_behind_wrong_mac_reads_nothing() -> None:
    """A client that sends a wrong AUTH and, in the same packet, a READ gets the refusal
    and nothing else: the READ is never parsed."""
    p, _, src, _ = _world()
    with anyio.fail_after(20):
        async with p:
            await p.register([region_of("src", src)])
            stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
            async with stream:
                read = b"".join(_wire.encode_read_request(
                    1, np.zeros(1, np.int64), np.zeros(1, np.int64), np.full(1, 4096, np.int64)))
                challenge = await stream.receive()
                assert challenge[:2] == _wire.MAGIC
                await stream.send(_wire.encode_frame(_wire.FrameType.AUTH, os.urandom(64) + b"intruder") + read)
                got = b""
                with anyio.move_on_after(3):
                    try:
                        while True:
                            got += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
    frame_type, _ = _wire.parse_header(got[: _wire.HEADER.size])
    assert frame_type is _wire.FrameType.AUTH_FAIL
    assert src[:64].tobytes() not in got and len(got) < 200


@pytest.mark.anyio
async def test_full_connection_table_is_typed_and_recovers() -> None:
    """With every connection slot held by silent clients, a new peer gets a typed
    ``TransportError`` (not a hang); once the handshake deadline frees the slots, it
    connects and reads normally."""
    p, d, src, dst = _world(handshake_timeout=1.0, max_connections=4)
    with anyio.fail_after(30):
        async with p, d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            silent = [await anyio.connect_tcp("127.0.0.1", p.address[1]) for _ in range(4)]
            try:
                await anyio.sleep(0.1)
                with pytest.raises(TransportError):
                    peer = await d.connect(p.local_metadata())
                    await d.read(peer, batch(0, 0, 0, 0, SIZE))
            finally:
                for stream in silent:
                    await stream.aclose()
            await anyio.sleep(1.5)
            await _legit_transfers(d, p, dst, src, 1)


def test_connect_error_is_a_transport_error() -> None:
    """The table's promise that a refused connection is catchable as ``TransportError``."""
    assert issubclass(ConnectError, TransportError)

"""TCP fallback security: authentication before anything, ranges checked, hostile clients isolated."""

from __future__ import annotations

import logging
import os

import anyio
import numpy as np
import pytest

from hybridxfer.errors import AuthenticationError, ConnectError, TransferError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport.tcp import TcpTransport, _wire

SECRET = "s3cr3t-value-never-logged"


def test_non_loopback_listen_without_secret_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRIDXFER_SECRET", raising=False)
    with pytest.raises(AuthenticationError, match="without a shared secret"):
        TcpTransport(name="p", host="0.0.0.0")
    monkeypatch.setenv("HYBRIDXFER_SECRET", SECRET)
    assert SECRET not in repr(TcpTransport(name="p", host="0.0.0.0"))


@pytest.mark.anyio
@pytest.mark.parametrize("client_secret", [None, "wrong-secret"])
async def test_wrong_or_missing_secret_refused_before_reading(
    client_secret: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("HYBRIDXFER_SECRET", raising=False)
    caplog.set_level(logging.DEBUG)
    src = np.arange(256, dtype=np.uint8)
    with anyio.fail_after(20):
        async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=client_secret) as d:
            await p.register([region_of("src", src)])
            with pytest.raises(AuthenticationError):
                await d.connect(p.local_metadata())
    assert SECRET not in caplog.text
    assert "authentication failed" in caplog.text


async def _hostile(port: int, payload: bytes, *, read_reply: bool = True) -> bytes:
    """Connect, send raw bytes, return whatever the server answers before closing."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(payload)
        got = b""
        if read_reply:
            with anyio.move_on_after(2):
                try:
                    while True:
                        got += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        return got


def _auth_frame(challenge: bytes, secret: str, name: str = "hostile") -> bytes:
    frame_type, length = _wire.parse_header(challenge[: _wire.HEADER.size])
    ch = _wire.decode_payload(frame_type, challenge[_wire.HEADER.size : _wire.HEADER.size + length])
    assert isinstance(ch, _wire.Challenge)
    nonce = os.urandom(32)
    mac = _wire.client_mac(secret.encode(), ch.nonce, nonce, name)
    return _wire.encode_frame(_wire.FrameType.AUTH, nonce + mac + name.encode())


@pytest.mark.anyio
async def test_malformed_frames_never_crash_the_server() -> None:
    src = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8)
    dst = np.zeros(1 << 16, np.uint8)
    with anyio.fail_after(30):
        async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=SECRET) as d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            port = p.address[1]
            read = b"".join(_wire.encode_read_request(1, np.zeros(1, np.int64), np.zeros(1, np.int64), np.full(1, 64, np.int64)))
            hostile = [
                b"GET / HTTP/1.1\r\n\r\n",
                _wire.HEADER.pack(b"HX", 9, 2, 10),  # unknown version
                _wire.HEADER.pack(b"HX", 1, 2, 2**63),  # absurd length: must not allocate
                _wire.HEADER.pack(b"HX", 1, 2, 100) + b"short",  # truncated, then close
                read,  # READ before authenticating: nothing served
                b"\x00" * 5,
            ]
            for payload in hostile:
                reply = await _hostile(port, payload)
                assert src[:64].tobytes() not in reply
                assert b"READ_OK" not in reply and len(reply) < 400
            # Authenticated but then garbage: closed, nothing served.
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                challenge = await stream.receive()
                await stream.send(_auth_frame(challenge, SECRET) + _wire.HEADER.pack(b"HX", 1, 77, 0))
                with anyio.move_on_after(2):
                    try:
                        while True:
                            assert src[:64].tobytes() not in await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
            peer = await d.connect(p.local_metadata())
            await d.read(peer, batch(0, 0, 0, 0, 1 << 16))
    assert np.array_equal(dst, src)


@pytest.mark.anyio
async def test_out_of_range_refused_and_others_still_served(caplog: pytest.LogCaptureFixture) -> None:
    backing = np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8)
    dst = np.full(8192, 0xAB, np.uint8)
    with anyio.fail_after(30):
        async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=SECRET) as d:
            await p.register([region_of("src", backing[:4096])])
            await d.register([region_of("dst", dst)])
            peer = await d.connect(p.local_metadata())
            # A raw authenticated client asks past the region end: refused with READ_ERR.
            stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
            async with stream:
                challenge = await stream.receive()
                await stream.send(_auth_frame(challenge, SECRET))
                await stream.receive()  # AUTH_OK
                req = _wire.encode_read_request(5, np.zeros(1, np.int64), np.array([4000], np.int64), np.array([4000], np.int64))
                await stream.send(b"".join(req))
                reply = await stream.receive()
                frame_type, _ = _wire.parse_header(reply[:12])
                assert frame_type is _wire.FrameType.READ_ERR
                assert backing[4096:4160].tobytes() not in reply
                with pytest.raises(TransferError, match="refused"):
                    await d.read(peer, batch(0, 4090, 0, 0, 100))
                assert (dst == 0xAB).all()
                await d.read(peer, batch(0, 0, 0, 0, 4096))  # other clients unaffected
    assert np.array_equal(dst[:4096], backing[:4096])
    assert "refused READ" in caplog.text


@pytest.mark.anyio
async def test_silent_and_slow_clients_do_not_stall_others() -> None:
    src = np.random.default_rng(2).integers(0, 256, 1 << 20, dtype=np.uint8)
    dst = np.zeros(1 << 20, np.uint8)
    with anyio.fail_after(30):
        async with TcpTransport(name="p", secret=SECRET, handshake_timeout=0.5) as p, \
                TcpTransport(name="d", secret=SECRET) as d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            silent = [await anyio.connect_tcp("127.0.0.1", p.address[1]) for _ in range(5)]
            try:
                peer = await d.connect(p.local_metadata())
                await d.read(peer, batch(0, 0, 0, 0, 1 << 20))
                assert np.array_equal(dst, src)
                # The handshake deadline closes the silent ones.
                for stream in silent:
                    with anyio.fail_after(5):
                        try:
                            while await stream.receive():
                                pass
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            pass
            finally:
                for stream in silent:
                    await stream.aclose()


@pytest.mark.anyio
async def test_connection_refused_is_connect_error() -> None:
    async with TcpTransport(name="p") as p, TcpTransport(name="d") as d:
        meta = p.local_metadata()
    async with TcpTransport(name="d2") as d2:
        with pytest.raises(ConnectError):
            await d2.connect(meta)
    del d

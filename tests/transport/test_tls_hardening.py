"""Hardening of the TCP handshakes: recorded handshakes cannot be replayed, secrets never leak.

The recordings are real: a recording proxy sits between a real reader and a real server
while they authenticate and transfer, and what it saw is then replayed — the client's
AUTH (and its READ) to a fresh CHALLENGE, the server's CHALLENGE and AUTH_OK to a fresh
client. Each replay must be refused before a byte of cache moves.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
import pytest

from hybridxfer.errors import AuthenticationError, HybridXferError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport import TlsConfig
from hybridxfer.transport.tcp import TcpTransport, _wire
from hybridxfer.transport.tcp._client import ClientOptions, TcpConnection
from tests._pki import Pki, pki

__all__ = ["pki"]

SECRET = b"replay-secret-0123456789abcdef"
SIZE = 64 << 10


def _frames(stream: bytes) -> list[tuple[_wire.FrameType, bytes]]:
    """Split recorded control traffic into (type, whole frame bytes), up to the first raw payload."""
    out = []
    pos = 0
    while pos + _wire.HEADER.size <= len(stream):
        frame_type, length = _wire.parse_header(stream[pos:pos + _wire.HEADER.size])
        out.append((frame_type, stream[pos:pos + _wire.HEADER.size + length]))
        pos += _wire.HEADER.size + length
        if frame_type is _wire.FrameType.READ_OK:
            break
    return out


async def _record(p: TcpTransport, d: TcpTransport) -> tuple[bytes, bytes]:
    """Run one real connect + READ through a recording proxy; (client->server, server->client) bytes."""
    upstream = p.address[1]
    sent: list[bytes] = [b"", b""]
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def pipe(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream, i: int) -> None:
        try:
            while True:
                data = await a.receive()
                sent[i] += data
                await b.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", upstream) as server, \
                anyio.create_task_group() as tg:
            tg.start_soon(pipe, client, server, 0)
            await pipe(server, client, 1)
            tg.cancel_scope.cancel()

    meta = p.local_metadata().replace(f'"port": {upstream}'.encode(), f'"port": {port}'.encode())
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        peer = await d.connect(meta)
        await d.read(peer, batch(0, 0, 0, 0, SIZE))
        peer.close()
        tg.cancel_scope.cancel()
    return sent[0], sent[1]


async def _raw_exchange(port: int, payload: bytes) -> bytes:
    """Connect, read the CHALLENGE, send ``payload``, return everything after the CHALLENGE."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        got = b""
        with anyio.fail_after(5):
            while len(got) < _wire.HEADER.size or len(got) < _wire.HEADER.size + _wire.parse_header(
                    got[:_wire.HEADER.size])[1]:
                got += await stream.receive()
        challenge_len = _wire.HEADER.size + _wire.parse_header(got[:_wire.HEADER.size])[1]
        rest = got[challenge_len:]
        await stream.send(payload)
        with anyio.fail_after(10):
            try:
                while True:
                    rest += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        return rest


@pytest.mark.anyio
async def test_a_recorded_auth_replayed_to_a_new_challenge_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    src, dst = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8), np.zeros(SIZE, np.uint8)
    async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=SECRET) as d:
        await p.register([region_of("src", src)])
        await d.register([region_of("dst", dst)])
        to_server, to_client = await _record(p, d)
        assert np.array_equal(dst, src) and src.tobytes() in to_client  # the recording is a real transfer
        frames = _frames(to_server)
        assert [t for t, _ in frames[:2]] == [_wire.FrameType.AUTH, _wire.FrameType.READ]
        caplog.set_level(logging.WARNING, "hybridxfer.transport.tcp.server")
        # the eavesdropper replays the recorded AUTH and READ on a new connection
        reply = await _raw_exchange(p.address[1], frames[0][1] + frames[1][1])
        assert [t for t, _ in _frames(reply)] == [_wire.FrameType.AUTH_FAIL]
        assert src[:256].tobytes() not in reply and len(reply) < 100
        assert "authentication failed" in caplog.text
        # negative control: a freshly computed AUTH on such a connection is accepted
        stream = await anyio.connect_tcp("127.0.0.1", p.address[1])
        async with stream:
            challenge = await stream.receive()
            ch = _wire.decode_frame(challenge)[1]
            assert isinstance(ch, _wire.Challenge)
            nonce = b"\x01" * 32
            await stream.send(_wire.encode_frame(_wire.FrameType.AUTH, nonce + _wire.client_mac(
                SECRET, ch.nonce, nonce, "d") + b"d"))
            ok = await stream.receive()
            assert _wire.parse_header(ok[:_wire.HEADER.size])[0] is _wire.FrameType.AUTH_OK


class _ReplayServer:
    """A fake P that answers every connection with recorded server bytes, and keeps what the client sent."""

    def __init__(self, script: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        self.received = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            conn.sendall(self.script)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self._thread.join(15)


@pytest.fixture
def replay_server() -> Iterator[list[_ReplayServer]]:
    made: list[_ReplayServer] = []
    yield made
    for server in made:
        server.close()


@pytest.mark.anyio
async def test_a_recorded_auth_ok_replayed_to_a_client_is_refused(replay_server: list[_ReplayServer]) -> None:
    src, dst = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8), np.zeros(SIZE, np.uint8)
    async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=SECRET) as d:
        await p.register([region_of("src", src)])
        await d.register([region_of("dst", dst)])
        _, to_client = await _record(p, d)
    frames = _frames(to_client)
    assert [t for t, _ in frames[:2]] == [_wire.FrameType.CHALLENGE, _wire.FrameType.AUTH_OK]
    fresh_challenge = _wire.encode_frame(_wire.FrameType.CHALLENGE, b"\x07" * 32 + b"p\0x")
    options = ClientOptions("d", SECRET, connect_timeout=10, stall_timeout=5)
    # the recorded CHALLENGE and AUTH_OK verbatim, then a fresh CHALLENGE with the recorded AUTH_OK
    for script in (frames[0][1] + frames[1][1], fresh_challenge + frames[1][1]):
        server = _ReplayServer(script)
        replay_server.append(server)
        with pytest.raises(AuthenticationError, match="does not know the shared secret"):
            await TcpConnection.open("127.0.0.1", server.port, options)
        server.close()
        sent = _frames(server.received)
        assert [t for t, _ in sent] == [_wire.FrameType.AUTH]  # no READ ever left the client


async def _failing_handshakes(pki: Pki, tmp_path: Path) -> list[str]:
    """Every kind of failed handshake we can provoke; the messages of the errors raised."""
    messages = []
    src, dst = np.zeros(4096, np.uint8), np.zeros(4096, np.uint8)
    attempts = [({"secret": SECRET}, {"secret": b"not-" + SECRET}),
                ({"secret": SECRET}, {}),
                ({"secret": SECRET, "tls": pki.p}, {"secret": SECRET, "tls": pki.untrusted}),
                ({"secret": SECRET, "tls": pki.p},
                 {"secret": SECRET, "tls": TlsConfig(pki.untrusted.cert, pki.untrusted.key, pki.ca.cert)}),
                ({"secret": SECRET, "tls": pki.wrong_host}, {"secret": SECRET, "tls": pki.d})]
    for p_opts, d_opts in attempts:
        async with TcpTransport(name="p", **p_opts) as p, TcpTransport(name="d", **d_opts) as d:  # type: ignore[arg-type]
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            with pytest.raises(HybridXferError) as info:
                await d.connect(p.local_metadata())
            messages += [str(info.value), repr(info.value), str(info.value.__cause__), repr(p), repr(d)]
    for bad in (TlsConfig(pki.p.cert, pki.d.key, pki.ca.cert), TlsConfig(pki.p.key, pki.p.key, pki.ca.cert)):
        with pytest.raises(HybridXferError) as info:
            TcpTransport(name="p", secret=SECRET, tls=bad)
        messages += [str(info.value), repr(info.value), repr(bad)]
    messages.append(repr(ClientOptions("d", SECRET, tls=pki.d.load())))
    return messages


@pytest.mark.anyio
async def test_secrets_and_keys_never_appear_in_logs_or_errors(pki: Pki, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = await _failing_handshakes(pki, tmp_path)
    text = caplog.text + "\n".join(messages)
    assert "refused our secret" in text and "refused our certificate" in text and "not acceptable" in text
    key_lines = [line for cfg in (pki.p, pki.d, pki.untrusted) for line in cfg.key.read_text().splitlines()
                 if "PRIVATE KEY" not in line]
    leaked = [s for s in (SECRET.decode(), SECRET.hex(), repr(SECRET), *key_lines) if s and s in text]
    assert leaked == []
    assert len(key_lines) >= 3  # the check had key material to look for

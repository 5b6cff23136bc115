"""Fuzzing the TCP handshakes, plain and TLS, against a live server and a live client.

Each hypothesis case is one hostile connection: truncated frames, oversized lengths, a
recorded AUTH replayed to a new CHALLENGE, garbage, a real ClientHello cut short or
replayed, a TLS client without a (valid) certificate — then a close, a half-close or
silence. Every case must end within a deadline with the server closing the connection
(or refusing with AUTH_FAIL), having sent no byte of its memory; after all of them the
same server still serves a good client, byte-exact. The client side gets the mirror
image: a fake server's hostile answers must end ``TcpConnection.open`` with a typed
:class:`ConnectError` within its deadline, never a hang or another exception.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator

import anyio
import anyio.from_thread
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridxfer.errors import ConnectError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport import TlsContexts
from hybridxfer.transport.tcp import TcpTransport, _wire
from hybridxfer.transport.tcp._client import ClientOptions, TcpConnection
from tests._pki import Pki, pki

__all__ = ["pki"]

SECRET = b"fuzz-secret"
SIZE = 1 << 16
#: Server deadlines, short so that silent cases end fast; the test's own deadline is larger.
HANDSHAKE_S = 0.4
DEADLINE_S = 5.0
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
T = _wire.FrameType


class LiveServer:
    """A TcpTransport serving ``src`` from a loop in another thread (hypothesis cases are sync)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, transport: TcpTransport, src: np.ndarray) -> None:
        self.portal, self.transport, self.src = portal, transport, src
        self.port = transport.address[1]

    def good_client_reads(self, tls: object = None) -> bool:
        dst = np.zeros(SIZE, np.uint8)

        async def read() -> None:
            async with TcpTransport(name="good", secret=SECRET, tls=tls) as d:  # type: ignore[arg-type]
                await d.register([region_of("dst", dst)])
                peer = await d.connect(self.transport.local_metadata())
                await d.read(peer, batch(0, 0, 0, 0, SIZE))

        self.portal.call(read)
        return bool(np.array_equal(dst, self.src))


@pytest.fixture
def live(request: pytest.FixtureRequest, pki: Pki) -> Iterator[LiveServer]:
    tls = pki.p if request.param == "tls" else None
    src = np.random.default_rng(11).integers(0, 256, SIZE, dtype=np.uint8)
    transport = TcpTransport(name="p", secret=SECRET, tls=tls, handshake_timeout=HANDSHAKE_S,
                             stall_timeout=HANDSHAKE_S)
    with anyio.from_thread.start_blocking_portal() as portal, portal.wrap_async_context_manager(transport):
        portal.call(transport.register, [region_of("src", src)])
        yield LiveServer(portal, transport, src)


def _drain(sock: socket.socket | ssl.SSLSocket, deadline: float = DEADLINE_S) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (bytes, closed within the deadline)."""
    got = b""
    sock.settimeout(deadline)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return got, False
    except (ssl.SSLError, OSError):
        pass
    return got, True


def _read_frame(sock: socket.socket | ssl.SSLSocket) -> bytes:
    sock.settimeout(DEADLINE_S)
    data = b""
    while len(data) < _wire.HEADER.size or len(data) < _wire.HEADER.size + _wire.parse_header(
            data[:_wire.HEADER.size])[1]:
        chunk = sock.recv(65536)
        assert chunk, "server closed before its CHALLENGE"
        data += chunk
    return data


def _server_frames(reply: bytes) -> list[T]:
    """The types of the frames in ``reply`` (a trailing partial frame is not one)."""
    types, pos = [], 0
    while pos + _wire.HEADER.size <= len(reply):
        kind, length = _wire.parse_header(reply[pos:pos + _wire.HEADER.size])
        types.append(kind)
        pos += _wire.HEADER.size + length
    return types


def _auth(challenge: bytes, secret: bytes = SECRET, name: str = "fuzz") -> bytes:
    ch = _wire.decode_frame(challenge)[1]
    assert isinstance(ch, _wire.Challenge)
    nonce = os.urandom(32)
    return _wire.encode_frame(T.AUTH, nonce + _wire.client_mac(secret, ch.nonce, nonce, name) + name.encode())


# --- what a hostile client sends -------------------------------------------------------------------

READ_BEFORE_AUTH = b"".join(_wire.encode_read_request(1, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                                      np.full(1, 64, np.int64)))

def _frame_pieces() -> st.SearchStrategy[bytes]:
    any_type = st.sampled_from([t.value for t in T] + [0, 77, 255])
    return st.one_of(
        st.binary(max_size=64),  # garbage
        st.builds(lambda code, n: _wire.HEADER.pack(_wire.MAGIC, _wire.VERSION, code, n),  # oversized lengths
                  any_type, st.integers(min_value=1 << 16, max_value=(1 << 64) - 1)),
        st.builds(lambda code, n, body: _wire.HEADER.pack(_wire.MAGIC, _wire.VERSION, code, n) + body[: n // 2],
                  any_type, st.integers(1, 300), st.binary(min_size=150, max_size=150)),  # truncated bodies
        st.builds(lambda v: _wire.HEADER.pack(_wire.MAGIC, v, T.AUTH, 70), st.integers(2, 255)),  # other versions
        st.just(READ_BEFORE_AUTH),
    )


Script = tuple[str, list[bytes], str]
scripts: st.SearchStrategy[Script] = st.tuples(
    st.sampled_from(["none", "replayed", "valid", "wrong-secret"]),  # what AUTH comes first
    st.lists(_frame_pieces(), max_size=3),
    st.sampled_from(["close", "half-close", "silence"]),
)


def _play(server: LiveServer, sock: socket.socket | ssl.SSLSocket, script: Script, recorded: list[bytes]) -> None:
    auth, pieces, ending = script
    if auth == "valid":  # an authenticated READ is served, rightly: leave it out here
        pieces = [p for p in pieces if p != READ_BEFORE_AUTH]
    challenge = _read_frame(sock)
    assert _server_frames(challenge) == [T.CHALLENGE]
    first = {"none": b"", "replayed": recorded[0], "valid": _auth(challenge),
             "wrong-secret": _auth(challenge, b"not-the-secret")}[auth]
    try:
        sock.sendall(first + b"".join(pieces))
        # socket.socket.shutdown: SSLSocket.shutdown would drop TLS and read ciphertext after
        if ending == "close":
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        elif ending == "half-close":
            socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass  # the server may already have closed on us: that is a refusal
    # An authenticated client that went quiet between frames is an idle pooled connection,
    # which the server keeps (bounded by max_connections); inside a frame it is a stall.
    idle_allowed = auth == "valid" and ending == "silence"
    reply, closed = _drain(sock, 4 * HANDSHAKE_S if idle_allowed else DEADLINE_S) if ending != "close" \
        else (b"", True)
    assert closed or idle_allowed, f"server did not close within {DEADLINE_S}s: {script!r}"
    assert server.src[:32].tobytes() not in reply and server.src[-32:].tobytes() not in reply
    allowed = {T.AUTH_OK} if auth == "valid" else {T.AUTH_FAIL} if auth in ("replayed", "wrong-secret") else set()
    assert set(_server_frames(reply)) <= allowed, (script, _server_frames(reply))


@pytest.mark.parametrize("live", ["plain"], indirect=True)
def test_plain_handshake_fuzz(live: LiveServer) -> None:
    recorded: list[bytes] = []
    with socket.create_connection(("127.0.0.1", live.port)) as sock:  # a real AUTH, recorded
        recorded.append(_auth(_read_frame(sock)))
        sock.sendall(recorded[0])
        assert _server_frames(_read_frame(sock)) == [T.AUTH_OK]

    @FUZZ
    @given(script=scripts)
    def case(script: Script) -> None:
        with socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as sock:
            _play(live, sock, script, recorded)

    case()
    assert live.good_client_reads()


def _client_hello() -> bytes:
    """A real TLS 1.3 ClientHello (what a replaying eavesdropper would have recorded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


tls_scripts = st.tuples(
    st.sampled_from(["raw", "no-cert", "foreign-cert", "good-cert"]),
    st.one_of(st.binary(max_size=64),
              st.builds(lambda n: _client_hello()[:n], st.integers(1, 200)),  # cut short
              st.just(b"REPLAY"),  # a recorded ClientHello, whole
              st.builds(lambda n: b"\x16\x03\x01" + n.to_bytes(2, "big"), st.integers(0, 65535))),  # record header
    st.sampled_from(["close", "half-close", "silence"]),
)


@pytest.mark.parametrize("live", ["tls"], indirect=True)
def test_tls_handshake_fuzz(live: LiveServer, pki: Pki) -> None:
    recorded_hello = _client_hello()
    contexts: dict[str, TlsContexts | ssl.SSLContext] = {"good-cert": pki.d.load()}
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(cafile=str(pki.ca.cert))
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.load_verify_locations(cafile=str(pki.ca.cert))
    foreign.load_cert_chain(str(pki.untrusted.cert), str(pki.untrusted.key))
    contexts.update({"no-cert": no_cert, "foreign-cert": foreign})
    recorded: list[bytes] = []

    @FUZZ
    @given(script=tls_scripts)
    def case(script: tuple[str, bytes, str]) -> None:
        how, payload, ending = script
        raw = socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S)
        with raw:
            if how == "raw":  # not TLS at all, or TLS bytes nobody can complete
                try:
                    raw.sendall(recorded_hello if payload == b"REPLAY" else payload)
                    if ending != "silence":
                        raw.shutdown(socket.SHUT_WR if ending == "half-close" else socket.SHUT_RDWR)
                except OSError:
                    pass  # already refused and closed by the server
                reply, closed = _drain(raw) if ending != "close" else (b"", True)
                assert closed, f"server did not close within {DEADLINE_S}s: {script!r}"
                # only TLS records (a handshake answer, an alert), never a clear-text frame
                assert reply == b"" or reply[:1] in (b"\x15", b"\x16"), reply[:40]
                assert live.src[:32].tobytes() not in reply
                return
            ctx = contexts[how]
            context = ctx.client if isinstance(ctx, TlsContexts) else ctx
            try:
                tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            except (ssl.SSLError, OSError):
                return  # refused during the handshake
            with tls:
                if how != "good-cert":
                    reply, closed = _drain(tls)
                    assert closed and reply == b"", (script, reply[:40])  # not even a CHALLENGE
                    return
                if not recorded:
                    recorded.append(_auth(_read_frame(tls)))  # recorded on a TLS session of its own
                    return
                _play(live, tls, ("replayed", [payload[:64]], ending), recorded)

    case()
    assert live.good_client_reads(pki.d)


# --- the client facing a hostile server -------------------------------------------------------------

class FakeServer:
    """Answers one connection with ``script``, then silence until the client gives up."""

    def __init__(self, script: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script: bytes) -> None:
        self.listener.settimeout(DEADLINE_S)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(DEADLINE_S)
            try:
                conn.sendall(script)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(DEADLINE_S + 5)


def _recorded_server_side() -> tuple[bytes, bytes]:
    """A real server's CHALLENGE and AUTH_OK for a real client's AUTH (recorded)."""
    async def record() -> tuple[bytes, bytes]:
        async with TcpTransport(name="p", secret=SECRET) as p:
            stream = await anyio.connect_tcp(*p.address)
            async with stream:
                challenge = await stream.receive()
                await stream.send(_auth(challenge))
                return challenge, await stream.receive()
    return anyio.run(record)


def test_client_facing_a_hostile_server() -> None:
    challenge, auth_ok = _recorded_server_side()
    assert _server_frames(challenge + auth_ok) == [T.CHALLENGE, T.AUTH_OK]
    pieces = st.one_of(
        st.just(challenge + auth_ok),  # a recorded handshake replayed: the MAC covers our fresh nonce
        st.builds(lambda n: (challenge + auth_ok)[:n], st.integers(0, len(challenge) + len(auth_ok) - 1)),
        st.builds(lambda code, n: _wire.HEADER.pack(_wire.MAGIC, _wire.VERSION, code, n),
                  st.sampled_from([t.value for t in T] + [99]), st.integers(min_value=1 << 16, max_value=(1 << 64) - 1)),
        st.builds(lambda junk: challenge + junk, st.binary(max_size=48)),
        st.just(challenge + _wire.encode_frame(T.AUTH_FAIL, b"no")),
        st.binary(max_size=80),
    )

    @FUZZ
    @given(script=pieces)
    def case(script: bytes) -> None:
        server = FakeServer(script)
        try:
            options = ClientOptions("d", SECRET, connect_timeout=DEADLINE_S, stall_timeout=0.1)

            async def attempt() -> None:
                with anyio.fail_after(DEADLINE_S + 2):  # the test's deadline, beyond the client's own
                    with pytest.raises(ConnectError):
                        conn = await TcpConnection.open("127.0.0.1", server.port, options)
                        conn.close()  # never reached: no script is a valid handshake

            anyio.run(attempt)
        finally:
            server.close()

    case()

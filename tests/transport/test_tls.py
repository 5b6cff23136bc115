"""TLS 1.3 on the TCP transport: encrypted, both certificates verified, nothing moves otherwise.

Every refusal is checked where it matters: the reader's destination keeps its sentinel
bytes, and the server sent no frame (a raw TLS client sees only the alert). Certificates
come from ``tests/_pki.py`` (the ``openssl`` command line, once per session).
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import AuthenticationError, InvalidArgumentError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport import TlsConfig, TlsConfigError, TlsIdentity
from hybridxfer.transport.tcp import TcpTransport, _wire
from hybridxfer.transport.tcp._client import ClientOptions, TcpConnection
from tests._pki import Pki, pki

__all__ = ["pki"]

SIZE = 1 << 20
SENTINEL = 0xAB


def _memory(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8), np.full(SIZE, SENTINEL, np.uint8)


@pytest.mark.anyio
async def test_transfer_over_tls_is_byte_exact_and_identities_are_the_certificates(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hybridxfer.transport.tcp")
    src, dst = _memory()
    # many short rows (joined into full records), long rows (sliced), out of order
    rng = np.random.default_rng(1)
    short = rng.permutation(np.arange(0, SIZE // 2, 512))[:600]
    rows = batch(0, np.concatenate([short, [SIZE // 2]]), 0, np.concatenate([short, [SIZE // 2]]),
                 np.concatenate([np.full(len(short), 300), [SIZE // 2]]))
    with anyio.fail_after(30):
        async with TcpTransport(name="p", tls=pki.p) as p, \
                TcpTransport(name="impostor-name", tls=pki.d, connections_per_peer=2, split_bytes=1) as d:
            assert p.tls == pki.p and "(TLS)" in repr(p)
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            peer = await d.connect(p.local_metadata())
            await d.read(peer, rows)
            moved = np.zeros(SIZE, bool)
            for o, n in zip(rows.dst_offset, rows.length, strict=True):
                moved[o:o + n] = True
            assert np.array_equal(dst[moved], src[moved]) and (dst[~moved] == SENTINEL).all()
            await d.read(peer, batch(0, 0, 0, 0, SIZE))  # one long row, split over two connections
            assert np.array_equal(dst, src)
            await d.notify(peer, b"done r0")
            note = await p.next_notification()
            assert note.message == b"done r0"
    # P knows the reader by its certificate's subject, not by the name it declared
    assert "authenticated d0 from 127.0.0.1" in caplog.text
    assert "authenticated impostor-name" not in caplog.text


@pytest.mark.anyio
async def test_client_sees_the_server_certificate_identity(pki: Pki) -> None:
    async with TcpTransport(name="p", tls=pki.p) as p:
        host, port = p.address
        conn = await TcpConnection.open(host, port, ClientOptions("d", b"", tls=pki.d.load()))
        try:
            assert conn.identity == TlsIdentity("p0", ("localhost",), ("127.0.0.1",))
            assert conn.identity.name == "p0"
        finally:
            conn.close()


async def _refused(p_tls: TlsConfig | None, d_tls: TlsConfig | None, match: str) -> np.ndarray:
    src, dst = _memory(2)
    with anyio.fail_after(30):
        async with TcpTransport(name="p", tls=p_tls) as p, TcpTransport(name="d", tls=d_tls) as d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            with pytest.raises(AuthenticationError, match=match):
                await d.connect(p.local_metadata())
    assert (dst == SENTINEL).all()
    return dst


@pytest.mark.anyio
async def test_client_certificate_from_another_ca_is_refused_by_the_server(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hybridxfer.transport.tcp.server")
    impostor = TlsConfig(pki.untrusted.cert, pki.untrusted.key, pki.ca.cert)  # trusts P, P does not trust it
    await _refused(pki.p, impostor, "refused our certificate")
    assert "TLS handshake with 127.0.0.1" in caplog.text and "refused" in caplog.text


@pytest.mark.anyio
async def test_server_certificate_from_another_ca_is_refused_by_the_client(pki: Pki) -> None:
    server = TlsConfig(pki.untrusted.cert, pki.untrusted.key, pki.ca.cert)
    await _refused(server, pki.d, "certificate of 127.0.0.1:[0-9]+ is not acceptable.*unable to get local issuer")


@pytest.mark.anyio
async def test_server_certificate_for_another_host_is_refused(pki: Pki) -> None:
    await _refused(pki.wrong_host, pki.d, "not acceptable.*(mismatch|match)")


@pytest.mark.anyio
async def test_tls_and_clear_text_peers_refuse_each_other(pki: Pki) -> None:
    await _refused(pki.p, None, "requires TLS")
    await _refused(None, pki.d, "does not offer TLS")
    # ignoring the metadata does not help: a TLS client dialling a clear-text server
    async with TcpTransport(name="plain") as plain:
        with pytest.raises(AuthenticationError, match="does not speak TLS"):
            await TcpConnection.open(*plain.address, ClientOptions("d", b"", connect_timeout=5, tls=pki.d.load()))


def _raw_tls_client(port: int, context: ssl.SSLContext) -> tuple[bytes, BaseException | None]:
    """Handshake as far as the server lets us, then read: the bytes it sent, and what ended it."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                while chunk := tls.recv(65536):
                    got += chunk
        except (ssl.SSLError, OSError) as exc:
            return got, exc
    return got, None


@pytest.mark.anyio
async def test_server_sends_no_frame_to_a_client_without_a_valid_certificate(pki: Pki) -> None:
    src, _ = _memory(3)
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(cafile=str(pki.ca.cert))
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.load_verify_locations(cafile=str(pki.ca.cert))
    foreign.load_cert_chain(str(pki.untrusted.cert), str(pki.untrusted.key))
    good = pki.d.load().client
    async with TcpTransport(name="p", tls=pki.p) as p:
        await p.register([region_of("src", src)])
        port = p.address[1]
        for context in (no_cert, foreign):
            got, ended = await anyio.to_thread.run_sync(_raw_tls_client, port, context)
            assert got == b"" and isinstance(ended, ssl.SSLError), (got[:40], ended)
        # negative control: the same probe with a good certificate does receive the CHALLENGE
        def first_header() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    good.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.recv(_wire.HEADER.size)

        head = await anyio.to_thread.run_sync(first_header)
        assert _wire.parse_header(head)[0] is _wire.FrameType.CHALLENGE
        # a clear-text client gets no frame either
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(b"".join(_wire.encode_read_request(1, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                                                 np.full(1, 64, np.int64))))
            reply = b""
            with anyio.move_on_after(5):
                try:
                    while True:
                        reply += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        assert _wire.MAGIC not in reply and src[:64].tobytes() not in reply


@pytest.mark.anyio
async def test_tls_and_secret_together_still_check_the_secret(pki: Pki) -> None:
    src, dst = _memory(4)
    async with TcpTransport(name="p", tls=pki.p, secret="right") as p, \
            TcpTransport(name="d", tls=pki.d, secret="wrong") as d:
        await p.register([region_of("src", src)])
        await d.register([region_of("dst", dst)])
        with pytest.raises(AuthenticationError, match="refused our secret"):
            await d.connect(p.local_metadata())
    assert (dst == SENTINEL).all()


def test_tls_replaces_the_secret_on_other_addresses(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRIDXFER_SECRET", raising=False)
    with pytest.raises(AuthenticationError, match="without a shared secret or TLS"):
        TcpTransport(name="p", host="0.0.0.0")
    assert TcpTransport(name="p", host="0.0.0.0", tls=pki.p).tls == pki.p
    as_mapping = {"cert": str(pki.p.cert), "key": str(pki.p.key), "ca": str(pki.p.ca)}
    assert TcpTransport(name="p", tls=as_mapping).tls == pki.p
    with pytest.raises(InvalidArgumentError, match="missing: \\['ca'\\]"):
        TcpTransport(name="p", tls={"cert": "a", "key": "b"})


def test_bad_files_are_named_never_shown(pki: Pki, tmp_path: Path) -> None:
    key_text = pki.p.key.read_text()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cases = [
        (TlsConfig(tmp_path / "missing.crt", pki.p.key, pki.ca.cert), "cert", "cannot read it"),
        (TlsConfig(pki.p.cert, tmp_path / "missing.key", pki.ca.cert), "key", "cannot read it"),
        (TlsConfig(pki.p.cert, pki.p.key, garbage), "ca", "not a PEM CA certificate"),
        (TlsConfig(garbage, pki.p.key, pki.ca.cert), "cert", "not a PEM certificate"),
        (TlsConfig(pki.p.cert, pki.p.cert, pki.ca.cert), "key", "not an unencrypted PEM private key"),
        (TlsConfig(pki.p.cert, pki.d.key, pki.ca.cert), "key", "does not belong to the certificate"),
        (TlsConfig(pki.p.key, pki.p.key, pki.ca.cert), "cert", "not a PEM certificate"),  # a key as cert
    ]
    for config, role, message in cases:
        with pytest.raises(TlsConfigError) as info:
            TcpTransport(name="p", tls=config)
        err = info.value
        assert err.role == role and err.path == getattr(config, role), (role, err)
        assert message in str(err) and str(err.path) in str(err)
        assert key_text.splitlines()[1] not in str(err) and "PRIVATE KEY" not in str(err)

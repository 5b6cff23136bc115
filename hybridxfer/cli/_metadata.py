"""The metadata side channel of ``serve``/``pull``: how a puller learns P's agent metadata.

Why a side channel: an :class:`~hybridxfer.execute.Agent` publishes an opaque metadata
blob (identity, layout, transport address) that an engine would pass through its own
control plane. ``serve`` has none, so it answers on ``--listen HOST:PORT`` with that blob
(its transport listens on an ephemeral port advertised inside the blob). One request per
connection, versioned, line-framed ASCII around a JSON document — no pickle, no HTTP::

    client: HXMETA 2\\n
    server: HXMETA 2 <nonce hex>\\n
    client: AUTH <hex HMAC-SHA256(secret, nonce + identity) | -> [identity]\\n
    server: OK <n>\\n<n bytes of JSON {"version": 2, "ranks": [{"rank", "tp", "metadata": hex, "model",
                                      "model_digest", "requests": [{"id", "tokens"}]}]}>
         or ERR <reason>\\n

``requests`` lists what the rank serves (request id and token count), so that a puller
checks its arguments against what is there before it allocates anything — a puller that
asks for another size would otherwise read the wrong blocks and report corrupt data.

A server without a secret accepts ``AUTH -`` (on loopback only, unless TLS is on: listening
elsewhere needs a secret or TLS, like the TCP transport). The secret is the TCP
transport's: ``HYBRIDXFER_SECRET`` or ``--secret-file``.

With TLS (``--tls-cert``/``--tls-key``/``--tls-ca``) the whole exchange runs inside TLS 1.3,
both certificates verified against the CA and the server's against the host dialled,
before the first line; without it the channel authenticates the puller but does not
encrypt. Every line and the document are size-capped *before* they are parsed
(:data:`MAX_LINE_BYTES`, :data:`MAX_DOCUMENT_BYTES`): a peer announcing more is refused
with both numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import attrs
from anyio.streams.tls import TLSAttribute, TLSStream

from hybridxfer.errors import AuthenticationError, ConnectError, InvalidArgumentError, ProtocolError
from hybridxfer.transport import TlsContexts, TlsIdentity, tls_refusal
from hybridxfer.transport.tcp import is_loopback

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_LINE_BYTES", "Endpoint", "RankMetadata", "ServedRequest", "fetch_metadata",
           "is_loopback", "parse_endpoint", "read_secret", "serve_metadata"]

log = logging.getLogger("hybridxfer.cli")

VERSION = 2
#: The largest metadata document a puller accepts (what it may allocate for one).
MAX_DOCUMENT_BYTES = 64 << 20
#: The longest line either side accepts (hello, nonce, AUTH, status).
MAX_LINE_BYTES = 4096
SECRET_ENV = "HYBRIDXFER_SECRET"

Stream = anyio.abc.ByteStream


@attrs.frozen
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class ServedRequest:
    """One request a P rank holds: its id and how many tokens it has."""

    id: str
    tokens: int


@attrs.frozen
class RankMetadata:
    """One P rank's published agent metadata, the model it holds and the requests it serves.

    ``model`` and ``model_digest`` repeat what the agent metadata carries, readably, so a
    puller of another model is told which model P holds, not only that digests differ.
    """

    rank: int
    tp: int
    metadata: bytes
    requests: tuple[ServedRequest, ...] = ()
    model: str = ""
    model_digest: str = ""


def parse_endpoint(text: str) -> Endpoint:
    """``HOST:PORT`` or ``[IPv6]:PORT``; raises ``ValueError`` with the offending text."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return Endpoint(host, int(port))


def read_secret(secret_file: str | None) -> bytes:
    """The shared secret: ``--secret-file`` (stripped) wins over ``$HYBRIDXFER_SECRET``."""
    if secret_file:
        try:
            with open(secret_file, "rb") as f:
                return f.read().strip()
        except OSError as exc:
            raise AuthenticationError(f"cannot read secret file {secret_file}: {exc.strerror or exc}") from exc
    return os.environ.get(SECRET_ENV, "").encode()


class _ClosedBeforeGreeting(ProtocolError):
    """The server closed (or broke) the connection before its first line."""


def _mac(secret: bytes, nonce: bytes) -> str:
    return hmac.new(secret, nonce, hashlib.sha256).hexdigest()


async def _line(stream: Stream, buffer: bytearray, limit: int = MAX_LINE_BYTES) -> str:
    """One line, refused once it is longer than ``limit`` — checked before it is decoded."""
    while b"\n" not in buffer:
        if len(buffer) > limit:
            raise ProtocolError(f"metadata channel: a line of more than {limit} bytes (the cap); "
                                f"{len(buffer)} bytes came without a newline")
        try:
            buffer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ProtocolError("metadata channel: peer closed the connection") from None
    end = buffer.index(b"\n")
    if end > limit:
        raise ProtocolError(f"metadata channel: a line of {end} bytes exceeds the cap of {limit} bytes")
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    return line.decode("ascii", "replace")


def _document(ranks: Sequence[RankMetadata]) -> bytes:
    return json.dumps({"version": VERSION, "ranks": [
        {"rank": r.rank, "tp": r.tp, "metadata": r.metadata.hex(), "model": r.model, "model_digest": r.model_digest,
         "requests": [{"id": q.id, "tokens": q.tokens} for q in r.requests]} for r in ranks]}).encode()


def _peer(stream: anyio.abc.SocketStream) -> str:
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except (anyio.TypedAttributeLookupError, OSError):
        return "unknown peer"
    if isinstance(address, tuple):
        return str(Endpoint(str(address[0]), int(address[1])))
    return str(address)


async def serve_metadata(listener: anyio.abc.Listener[anyio.abc.SocketStream], ranks: Sequence[RankMetadata],
                         secret: bytes, *, tls: TlsContexts | None = None, handshake_timeout: float = 10.0,
                         on_fetch: Callable[[str], None] | None = None) -> None:
    """Answer metadata requests on ``listener`` forever (cancel to stop).

    ``on_fetch`` is called with the identity of each puller the document was sent to —
    its certificate's subject under ``tls``, else the name it declared in ``AUTH`` (bound
    into its MAC; empty if it declared none) — so that ``serve`` can grant it the requests
    the document lists.

    A refused puller is logged as a warning with its address and the reason (never a
    secret or a MAC), so an operator sees who knocked with the wrong key. With ``tls``,
    a puller whose certificate the CA did not sign gets nothing but the TLS alert.
    Each request must complete within ``handshake_timeout`` seconds.
    """
    document = _document(ranks)
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ProtocolError(f"the metadata document of {len(document)} bytes exceeds the cap of "
                            f"{MAX_DOCUMENT_BYTES} bytes that pullers accept")

    async def handle(raw: anyio.abc.SocketStream) -> None:
        peer = _peer(raw)
        certified = ""
        async with raw:
            buffer = bytearray()
            try:
                with anyio.fail_after(handshake_timeout):
                    stream: Stream = raw
                    if tls is not None:
                        try:
                            wrapped = await TLSStream.wrap(raw, server_side=True, ssl_context=tls.server,
                                                           standard_compatible=False)
                        except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                            log.warning("metadata request from %s refused: TLS handshake failed: %s", peer,
                                        tls_refusal(exc) or type(exc).__name__)
                            return
                        stream = wrapped
                        certified = TlsIdentity.of(wrapped.extra(TLSAttribute.ssl_object)).name
                        peer = f"{certified} at {peer}"
                    hello = await _line(stream, buffer)
                    if hello != f"HXMETA {VERSION}":
                        log.warning("metadata request from %s refused: unsupported request %r", peer, hello[:40])
                        await stream.send(f"ERR unsupported request {hello[:40]!r}; expected HXMETA {VERSION}\n".encode())
                        return
                    nonce = secrets.token_bytes(16)
                    await stream.send(f"HXMETA {VERSION} {nonce.hex()}\n".encode())
                    auth, _, claimed = (await _line(stream, buffer)).partition(" ")[2].partition(" ")
                    auth = f"AUTH {auth}"
                    if secret and not hmac.compare_digest(auth, f"AUTH {_mac(secret, nonce + claimed.encode())}"):
                        reason = "no secret given" if auth == "AUTH -" else "wrong secret"
                        log.warning("metadata request from %s refused: authentication failed (%s)", peer, reason)
                        await stream.send(b"ERR authentication failed\n")
                        return
                    await stream.send(f"OK {len(document)}\n".encode() + document)
                    log.info("metadata sent to %s", peer)
                    if on_fetch is not None:
                        on_fetch(certified or claimed)
            except (TimeoutError, ProtocolError, ssl.SSLError, anyio.BrokenResourceError,
                    anyio.ClosedResourceError) as exc:
                log.info("metadata request from %s dropped: %s", peer, exc or "timeout")

    await listener.serve(handle)


async def fetch_metadata(endpoint: Endpoint, secret: bytes, *, timeout: float = 30.0, tls: TlsContexts | None = None,
                         max_document: int = MAX_DOCUMENT_BYTES, identity: str = "") -> list[RankMetadata]:
    """Ask a ``serve`` process for its ranks' metadata; retries connecting until ``timeout``.

    Raises :class:`ConnectError` when nothing answers within ``timeout`` seconds (the
    whole exchange counts), :class:`AuthenticationError` when the secret or our
    certificate is refused or the server's certificate is not acceptable (``tls``: not
    signed by the CA, or not naming ``endpoint.host``), and :class:`ProtocolError` when
    the answer is not a ``serve`` metadata document or announces more than
    ``max_document`` bytes. ``identity``: the name our transport authenticates with
    (declared in ``AUTH``, bound into the MAC), which ``serve --require-grants`` grants the
    listed requests to when no certificate names us.
    """
    if any(c.isspace() for c in identity) or not identity.isascii():
        raise InvalidArgumentError(f"a puller identity is ASCII without spaces, not {identity!r}")
    last: list[OSError] = []
    with anyio.move_on_after(timeout):
        while True:
            try:
                stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
                break
            except OSError as exc:
                last[:] = [exc]
                await anyio.sleep(0.2)
        async with stream:
            try:
                if tls is None:
                    return await _exchange(stream, endpoint, secret, max_document, identity)
                wrapped = await TLSStream.wrap(stream, server_side=False, hostname=endpoint.host,
                                               ssl_context=tls.client, standard_compatible=False)
                return await _exchange(wrapped, endpoint, secret, max_document, identity)
            except (ssl.SSLError, anyio.BrokenResourceError, ProtocolError) as exc:
                refused = tls_refusal(exc) if tls is not None else ""
                if tls is not None and (isinstance(exc, _ClosedBeforeGreeting) or "EOF" in refused):
                    # TLS 1.3: the server checks our certificate after our side of the handshake
                    # finished; a refusal then shows as the connection closing
                    refused = "refused our certificate: it closed the connection right after the TLS " \
                              "handshake (is our certificate signed by the CA the server trusts?)"
                if refused:
                    raise AuthenticationError(f"{endpoint}: TLS: the metadata server {refused}") from None
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"{endpoint}: metadata channel broke: {exc}") from None
    reason = f": {last[0].strerror or last[0]}" if last else " (no answer)"
    raise ConnectError(f"cannot reach hybridxfer serve at {endpoint} within {timeout:.3g} s{reason}")


async def _exchange(stream: Stream, endpoint: Endpoint, secret: bytes, max_document: int,
                    identity: str = "") -> list[RankMetadata]:
    buffer = bytearray()
    await stream.send(f"HXMETA {VERSION}\n".encode())
    try:
        hello = await _line(stream, buffer)
    except ProtocolError as exc:
        raise _ClosedBeforeGreeting(f"{endpoint}: {exc}") from exc
    parts = hello.split()
    if parts[:1] == ["ERR"]:
        raise ProtocolError(f"{endpoint}: {hello[4:]} (a serve of another hybridxfer version?)")
    if len(parts) != 3 or parts[:2] != ["HXMETA", str(VERSION)]:
        raise ProtocolError(f"{endpoint} is not a hybridxfer serve metadata port (got {hello[:40]!r})")
    try:
        nonce = bytes.fromhex(parts[2])
    except ValueError:
        raise ProtocolError(f"{endpoint}: bad nonce {parts[2][:40]!r}") from None
    mac = _mac(secret, nonce + identity.encode()) if secret else "-"
    await stream.send(f"AUTH {mac}{' ' + identity if identity else ''}\n".encode())
    status = await _line(stream, buffer)
    if status.startswith("ERR"):
        raise AuthenticationError(f"{endpoint}: {status[4:]} (check HYBRIDXFER_SECRET / --secret-file)")
    size = int(status[3:]) if status.startswith("OK ") and status[3:].isdigit() else -1
    if size < 0:
        raise ProtocolError(f"{endpoint}: bad metadata header {status[:40]!r}")
    if size > max_document:
        raise ProtocolError(f"{endpoint}: the metadata document of {size} bytes exceeds the cap of "
                            f"{max_document} bytes; refused before reading it")
    while len(buffer) < size:
        try:
            buffer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise ProtocolError(f"{endpoint}: metadata truncated") from None
    return _parse(bytes(buffer[:size]), endpoint)


def _parse(raw: bytes, endpoint: Endpoint) -> list[RankMetadata]:
    try:
        doc = json.loads(raw)
        if doc.get("version") != VERSION:
            raise ProtocolError(f"{endpoint}: metadata version {doc.get('version')!r}, expected {VERSION}")
        return [RankMetadata(int(r["rank"]), int(r["tp"]), bytes.fromhex(r["metadata"]),
                             tuple(ServedRequest(str(q["id"]), int(q["tokens"])) for q in r["requests"]),
                             str(r["model"]), str(r["model_digest"]))
                for r in doc["ranks"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{endpoint}: malformed metadata document ({type(exc).__name__}: {exc})") from None

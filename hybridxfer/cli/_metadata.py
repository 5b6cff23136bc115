"""The metadata side channel of ``serve``/``pull``: how a puller learns P's agent metadata.

Why a side channel: an :class:`~hybridxfer.execute.Agent` publishes an opaque metadata
blob (identity, layout, transport address) that an engine would pass through its own
control plane. ``serve`` has none, so it answers on ``--listen HOST:PORT`` with that blob
(its transport listens on an ephemeral port advertised inside the blob). One request per
connection, versioned, line-framed ASCII around a JSON document — no pickle, no HTTP::

    client: HXMETA 2\\n
    server: HXMETA 2 <nonce hex>\\n
    client: AUTH <hex HMAC-SHA256(secret, nonce) | ->\\n
    server: OK <n>\\n<n bytes of JSON {"version": 2, "ranks": [{"rank", "tp", "metadata": hex, "model",
                                      "model_digest", "requests": [{"id", "tokens"}]}]}>
         or ERR <reason>\\n

``requests`` lists what the rank serves (request id and token count), so that a puller
checks its arguments against what is there before it allocates anything — a puller that
asks for another size would otherwise read the wrong blocks and report corrupt data.

A server without a secret (loopback only; non-loopback listening needs one, like the TCP
transport) accepts ``AUTH -``. The secret is the TCP transport's: ``HYBRIDXFER_SECRET``
or ``--secret-file``. The channel authenticates the puller, it does not encrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence

import anyio
import anyio.abc
import attrs

from hybridxfer.errors import AuthenticationError, ConnectError, ProtocolError
from hybridxfer.transport.tcp import is_loopback

__all__ = ["Endpoint", "RankMetadata", "ServedRequest", "fetch_metadata", "is_loopback", "parse_endpoint",
           "read_secret", "serve_metadata"]

log = logging.getLogger("hybridxfer.cli")

VERSION = 2
_MAX_DOCUMENT = 64 << 20
SECRET_ENV = "HYBRIDXFER_SECRET"


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


def _mac(secret: bytes, nonce: bytes) -> str:
    return hmac.new(secret, nonce, hashlib.sha256).hexdigest()


async def _line(stream: anyio.abc.ByteStream, buffer: bytearray, limit: int = 4096) -> str:
    while b"\n" not in buffer:
        if len(buffer) > limit:
            raise ProtocolError("metadata channel: line too long")
        try:
            buffer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ProtocolError("metadata channel: peer closed the connection") from None
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
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
                         secret: bytes) -> None:
    """Answer metadata requests on ``listener`` forever (cancel to stop).

    A refused puller is logged as a warning with its address and the reason (never a
    secret or a MAC), so an operator sees who knocked with the wrong key.
    """
    document = _document(ranks)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        peer = _peer(stream)
        async with stream:
            buffer = bytearray()
            try:
                with anyio.fail_after(10):
                    hello = await _line(stream, buffer)
                    if hello != f"HXMETA {VERSION}":
                        log.warning("metadata request from %s refused: unsupported request %r", peer, hello[:40])
                        await stream.send(f"ERR unsupported request {hello[:40]!r}; expected HXMETA {VERSION}\n".encode())
                        return
                    nonce = secrets.token_bytes(16)
                    await stream.send(f"HXMETA {VERSION} {nonce.hex()}\n".encode())
                    auth = await _line(stream, buffer)
                    if secret and not hmac.compare_digest(auth, f"AUTH {_mac(secret, nonce)}"):
                        reason = "no secret given" if auth == "AUTH -" else "wrong secret"
                        log.warning("metadata request from %s refused: authentication failed (%s)", peer, reason)
                        await stream.send(b"ERR authentication failed\n")
                        return
                    await stream.send(f"OK {len(document)}\n".encode() + document)
                    log.info("metadata sent to %s", peer)
            except (TimeoutError, ProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                log.info("metadata request from %s dropped: %s", peer, exc or "timeout")

    await listener.serve(handle)


async def fetch_metadata(endpoint: Endpoint, secret: bytes, *, timeout: float = 30.0) -> list[RankMetadata]:
    """Ask a ``serve`` process for its ranks' metadata; retries connecting until ``timeout``.

    Raises :class:`ConnectError` when nothing answers within ``timeout`` seconds (the
    whole exchange counts), :class:`AuthenticationError` when the secret is refused and
    :class:`ProtocolError` when the answer is not a ``serve`` metadata document.
    """
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
            return await _exchange(stream, endpoint, secret)
    reason = f": {last[0].strerror or last[0]}" if last else " (no answer)"
    raise ConnectError(f"cannot reach hybridxfer serve at {endpoint} within {timeout:.3g} s{reason}")


async def _exchange(stream: anyio.abc.SocketStream, endpoint: Endpoint, secret: bytes) -> list[RankMetadata]:
    buffer = bytearray()
    await stream.send(f"HXMETA {VERSION}\n".encode())
    hello = await _line(stream, buffer)
    parts = hello.split()
    if parts[:1] == ["ERR"]:
        raise ProtocolError(f"{endpoint}: {hello[4:]} (a serve of another hybridxfer version?)")
    if len(parts) != 3 or parts[:2] != ["HXMETA", str(VERSION)]:
        raise ProtocolError(f"{endpoint} is not a hybridxfer serve metadata port (got {hello[:40]!r})")
    try:
        nonce = bytes.fromhex(parts[2])
    except ValueError:
        raise ProtocolError(f"{endpoint}: bad nonce {parts[2][:40]!r}") from None
    await stream.send(f"AUTH {_mac(secret, nonce) if secret else '-'}\n".encode())
    status = await _line(stream, buffer)
    if status.startswith("ERR"):
        raise AuthenticationError(f"{endpoint}: {status[4:]} (check HYBRIDXFER_SECRET / --secret-file)")
    size = int(status[3:]) if status.startswith("OK ") and status[3:].isdigit() else -1
    if not 0 <= size <= _MAX_DOCUMENT:
        raise ProtocolError(f"{endpoint}: bad metadata header {status[:40]!r}")
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

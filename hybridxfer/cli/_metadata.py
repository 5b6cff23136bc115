"""The metadata side channel of ``serve``/``pull``: how a puller learns P's agent metadata.

Why a side channel: an :class:`~hybridxfer.execute.Agent` publishes an opaque metadata
blob (identity, layout, transport address) that an engine would pass through its own
control plane. ``serve`` has none, so it answers on ``--listen HOST:PORT`` with that blob
(its transport listens on an ephemeral port advertised inside the blob). One request per
connection, versioned, line-framed ASCII around a JSON document — no pickle, no HTTP::

    client: HXMETA 1\\n
    server: HXMETA 1 <nonce hex>\\n
    client: AUTH <hex HMAC-SHA256(secret, nonce) | ->\\n
    server: OK <n>\\n<n bytes of JSON {"version": 1, "ranks": [{"rank", "tp", "metadata": hex}]}>
         or ERR <reason>\\n

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
from hybridxfer.transport.tcp._transport import is_loopback

__all__ = ["Endpoint", "RankMetadata", "fetch_metadata", "is_loopback", "parse_endpoint", "read_secret",
           "serve_metadata"]

log = logging.getLogger("hybridxfer.cli")

VERSION = 1
_MAX_DOCUMENT = 64 << 20
SECRET_ENV = "HYBRIDXFER_SECRET"


@attrs.frozen
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class RankMetadata:
    """One P rank's published agent metadata."""

    rank: int
    tp: int
    metadata: bytes


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
            raise AuthenticationError(f"cannot read secret file {secret_file}: {exc}") from exc
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


async def serve_metadata(listener: anyio.abc.Listener[anyio.abc.SocketStream], ranks: Sequence[RankMetadata],
                         secret: bytes) -> None:
    """Answer metadata requests on ``listener`` forever (cancel to stop)."""
    document = json.dumps({"version": VERSION, "ranks": [
        {"rank": r.rank, "tp": r.tp, "metadata": r.metadata.hex()} for r in ranks]}).encode()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = bytearray()
            try:
                with anyio.fail_after(10):
                    hello = await _line(stream, buffer)
                    if hello != f"HXMETA {VERSION}":
                        await stream.send(f"ERR unsupported request {hello[:40]!r}; expected HXMETA {VERSION}\n".encode())
                        return
                    nonce = secrets.token_bytes(16)
                    await stream.send(f"HXMETA {VERSION} {nonce.hex()}\n".encode())
                    auth = await _line(stream, buffer)
                    if secret and not hmac.compare_digest(auth, f"AUTH {_mac(secret, nonce)}"):
                        log.info("metadata request refused: bad secret")
                        await stream.send(b"ERR authentication failed\n")
                        return
                    await stream.send(f"OK {len(document)}\n".encode() + document)
            except (TimeoutError, ProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                log.info("metadata request dropped: %s", exc or "timeout")

    await listener.serve(handle)


async def fetch_metadata(endpoint: Endpoint, secret: bytes, *, timeout: float = 30.0) -> list[RankMetadata]:
    """Ask a ``serve`` process for its ranks' metadata; retries connecting until ``timeout``."""
    last: OSError | None = None
    with anyio.move_on_after(timeout) as scope:
        while True:
            try:
                stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
                break
            except OSError as exc:
                last = exc
                await anyio.sleep(0.2)
    if scope.cancelled_caught:
        raise ConnectError(f"cannot reach hybridxfer serve at {endpoint}: {last}")
    buffer = bytearray()
    async with stream:
        with anyio.fail_after(timeout):
            await stream.send(f"HXMETA {VERSION}\n".encode())
            hello = await _line(stream, buffer)
            parts = hello.split()
            if parts[:1] == ["ERR"]:
                raise ConnectError(f"{endpoint}: {hello[4:]}")
            if len(parts) != 3 or parts[:2] != ["HXMETA", str(VERSION)]:
                raise ProtocolError(f"{endpoint} is not a hybridxfer serve metadata port (got {hello[:40]!r})")
            mac = _mac(secret, bytes.fromhex(parts[2])) if secret else "-"
            await stream.send(f"AUTH {mac}\n".encode())
            status = await _line(stream, buffer)
            if status.startswith("ERR"):
                raise AuthenticationError(f"{endpoint}: {status[4:]} (check HYBRIDXFER_SECRET / --secret-file)")
            size = int(status[3:]) if status.startswith("OK ") and status[3:].isdigit() else -1
            if not 0 <= size <= _MAX_DOCUMENT:
                raise ProtocolError(f"{endpoint}: bad metadata header {status[:40]!r}")
            while len(buffer) < size:
                try:
                    buffer += await stream.receive()
                except anyio.EndOfStream:
                    raise ProtocolError(f"{endpoint}: metadata truncated") from None
    doc = json.loads(bytes(buffer[:size]))
    if doc.get("version") != VERSION:
        raise ProtocolError(f"{endpoint}: metadata version {doc.get('version')!r}, expected {VERSION}")
    return [RankMetadata(int(r["rank"]), int(r["tp"]), bytes.fromhex(r["metadata"])) for r in doc["ranks"]]

"""JSON over HTTP/1.1, just enough to talk to etcd's v3 gateway.

Why not an HTTP library: the gateway needs two things, a POST answered by one JSON object
and a POST answered by a chunked stream of JSON objects (watch, lease keep-alive), and the
core must not grow a dependency for them. Every call is bounded by the caller's deadline;
a peer that speaks something else than HTTP gets a :class:`ProtocolError`, one that cannot
be reached a :class:`ConnectError`, both naming the endpoint.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs

from hybridxfer.errors import ConnectError, ProtocolError

__all__ = ["Endpoint", "open_stream", "post_json"]

#: A reply larger than this is not something etcd sends for our keys: refuse it before parsing.
MAX_BODY_BYTES = 16 << 20


@attrs.frozen
class Endpoint:
    """``http://host:port`` of one etcd member."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://127.0.0.1:2379`` (or ``127.0.0.1:2379``) -> Endpoint; TLS is not spoken here."""
        rest = url.strip()
        if rest.startswith("https://"):
            raise ConnectError(f"etcd {url!r}: https is not supported; use an http:// client URL")
        rest = rest.removeprefix("http://").rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or "/" in rest:
            raise ConnectError(f"etcd {url!r}: expected http://HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


def _request(endpoint: Endpoint, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + payload


class _Reader:
    """Buffered reads of one HTTP response: the head, then a sized or chunked body."""

    def __init__(self, stream: anyio.abc.ByteStream, endpoint: Endpoint) -> None:
        self._stream = stream
        self._endpoint = endpoint
        self._buffer = bytearray()

    async def _fill(self) -> None:
        try:
            data = await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise ConnectError(f"etcd {self._endpoint}: connection closed mid-reply") from exc
        self._buffer += data
        if len(self._buffer) > MAX_BODY_BYTES:
            raise ProtocolError(f"etcd {self._endpoint}: reply over {MAX_BODY_BYTES} bytes")

    async def line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def head(self) -> tuple[int, dict[str, str]]:
        status_line = await self.line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"etcd {self._endpoint}: not an HTTP reply: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while line := await self.line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def next_chunk(self) -> bytes | None:
        """The next chunk of a chunked body, or None after the last one."""
        size_line = (await self.line()).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise ProtocolError(f"etcd {self._endpoint}: bad chunk size {size_line[:20]!r}") from None
        if size > MAX_BODY_BYTES:
            raise ProtocolError(f"etcd {self._endpoint}: chunk of {size} bytes")
        if size == 0:
            return None
        data = await self.exactly(size)
        await self.exactly(2)
        return data


def _decode(endpoint: Endpoint, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"etcd {endpoint}: reply is not JSON: {raw[:80]!r}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError(f"etcd {endpoint}: reply is not a JSON object")
    return doc


@asynccontextmanager
async def _exchange(endpoint: Endpoint, path: str, body: dict[str, Any]) -> AsyncIterator[_Reader]:
    try:
        stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
    except OSError as exc:
        raise ConnectError(f"etcd {endpoint}: cannot connect ({exc.strerror or exc})") from exc
    async with stream:
        try:
            await stream.send(_request(endpoint, path, body))
        except (OSError, anyio.BrokenResourceError) as exc:
            raise ConnectError(f"etcd {endpoint}: connection lost while sending") from exc
        yield _Reader(stream, endpoint)


def _check_status(endpoint: Endpoint, path: str, status: int, body: bytes) -> None:
    if status != 200:
        raise ProtocolError(f"etcd {endpoint}{path}: HTTP {status}: {body[:200].decode('utf-8', 'replace')}")


async def post_json(endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request, one JSON object back. Cancel-safe: a cancelled call closes its connection."""
    async with _exchange(endpoint, path, body) as reader:
        status, headers = await reader.head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while (chunk := await reader.next_chunk()) is not None:
                parts.append(chunk)
            raw = b"".join(parts)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY_BYTES:
                raise ProtocolError(f"etcd {endpoint}: reply of {length} bytes")
            raw = await reader.exactly(length)
        _check_status(endpoint, path, status, raw)
        return _decode(endpoint, raw)


@asynccontextmanager
async def open_stream(endpoint: Endpoint, path: str, body: dict[str, Any], *,
                      head_timeout_s: float) -> AsyncIterator[JsonStream]:
    """A request answered by a stream of newline-separated JSON objects (gRPC gateway streams).

    ``async with open_stream(...) as objects: async for obj in objects: ...``; leaving the
    block closes the connection, which is how a watch or a keep-alive is stopped. Connecting
    and the reply's head are bounded by ``head_timeout_s`` (:class:`ConnectError`); the
    objects then arrive as slowly as the server sends them."""
    async with AsyncExitStack() as stack:
        try:
            with anyio.fail_after(head_timeout_s):
                reader = await stack.enter_async_context(_exchange(endpoint, path, body))
                status, headers = await reader.head()
                if status != 200 or headers.get("transfer-encoding", "").lower() != "chunked":
                    raw = await reader.exactly(min(int(headers.get("content-length", "0") or 0), 4096))
                    _check_status(endpoint, path, status, raw)
                    raise ProtocolError(f"etcd {endpoint}{path}: expected a chunked stream")
        except TimeoutError as exc:
            raise ConnectError(f"etcd {endpoint}{path}: no reply within {head_timeout_s:g} s") from exc
        yield JsonStream(endpoint, reader)


class JsonStream:
    """The JSON objects of one streamed reply, in order; ends when the server ends the body."""

    def __init__(self, endpoint: Endpoint, reader: _Reader) -> None:
        self._endpoint = endpoint
        self._reader = reader
        self._pending = b""
        self._ready: list[bytes] = []
        self._ended = False

    def __aiter__(self) -> JsonStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            chunk = await self._reader.next_chunk()
            if chunk is None:
                self._ended = True
                lines, self._pending = [self._pending], b""
            else:
                *lines, self._pending = (self._pending + chunk).split(b"\n")
            self._ready.extend(line for line in lines if line.strip())
        return _decode(self._endpoint, self._ready.pop(0))

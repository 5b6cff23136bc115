"""The slice of etcd's v3 API the directory needs: leased puts, prefix reads, watches.

Keys and values travel base64-encoded (the gateway's JSON mapping of bytes); numbers that
are int64 in etcd arrive as strings. Every call is bounded by ``timeout_s``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import attrs

from hybridxfer.discovery._http import Endpoint, open_stream, post_json
from hybridxfer.errors import ConnectError, ProtocolError

__all__ = ["EtcdClient", "KeyEvent", "KeyValue"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix`` (etcd's range_end)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


@attrs.frozen
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    lease: int


@attrs.frozen
class KeyEvent:
    """A key was put (``value`` set) or deleted (``value`` None: deleted, or its lease expired)."""

    key: bytes
    value: bytes | None
    revision: int


def _kv(doc: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(doc["key"]), _unb64(doc.get("value", "")), int(doc.get("mod_revision", 0)),
                    int(doc.get("lease", 0)))


class EtcdClient:
    """A client of one etcd member's gRPC gateway (``http://host:port``)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.endpoint = Endpoint.parse(url)
        self.timeout_s = timeout_s

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with anyio.fail_after(self.timeout_s):
                return await post_json(self.endpoint, path, body)
        except TimeoutError as exc:
            raise ConnectError(f"etcd {self.endpoint}{path}: no reply within {self.timeout_s:g} s") from exc

    async def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; keys put with it vanish when it is not kept alive."""
        doc = await self._call("/v3/lease/grant", {"TTL": ttl_s})
        if "ID" not in doc:
            raise ProtocolError(f"etcd {self.endpoint}: lease grant refused: {doc.get('error', doc)}")
        return int(doc["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Refresh ``lease``; returns the TTL left (0: the lease is gone)."""
        try:
            with anyio.fail_after(self.timeout_s):
                async with open_stream(self.endpoint, "/v3/lease/keepalive", {"ID": str(lease)},
                                       head_timeout_s=self.timeout_s) as replies:
                    async for reply in replies:
                        return int(reply.get("result", {}).get("TTL", 0))
        except TimeoutError as exc:
            raise ConnectError(f"etcd {self.endpoint}: lease keep-alive got no reply within {self.timeout_s:g} s") \
                from exc
        raise ProtocolError(f"etcd {self.endpoint}: lease keep-alive closed without a reply")

    async def revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Returns the revision of the put."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        doc = await self._call("/v3/kv/put", body)
        if "header" not in doc:
            raise ProtocolError(f"etcd {self.endpoint}: put refused: {doc.get('error', doc)}")
        return int(doc["header"]["revision"])

    async def delete(self, key: bytes) -> None:
        await self._call("/v3/kv/deleterange", {"key": _b64(key)})

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store's revision at that read."""
        doc = await self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        if "header" not in doc:
            raise ProtocolError(f"etcd {self.endpoint}: range refused: {doc.get('error', doc)}")
        return [_kv(kv) for kv in doc.get("kvs", [])], int(doc["header"]["revision"])

    @asynccontextmanager
    async def watch_prefix(self, prefix: bytes, *, start_revision: int) -> AsyncIterator[AsyncIterator[KeyEvent]]:
        """Events on keys under ``prefix`` from ``start_revision`` on (no gap after a read at
        ``start_revision - 1``). Not bounded by ``timeout_s``: a watch waits as long as its caller."""
        request = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                      "start_revision": str(start_revision)}}
        async with open_stream(self.endpoint, "/v3/watch", request, head_timeout_s=self.timeout_s) as objects, \
                aclosing(self._events(objects)) as events:
            yield events

    async def _events(self, objects: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[KeyEvent, None]:
        async for obj in objects:
            result = obj.get("result")
            if result is None:
                raise ProtocolError(f"etcd {self.endpoint}: watch failed: {obj.get('error', obj)}")
            if result.get("canceled"):
                raise ConnectError(f"etcd {self.endpoint}: watch cancelled by the server: "
                                   f"{result.get('cancel_reason', 'no reason given')}")
            for event in result.get("events", []):
                kv = event["kv"]
                deleted = event.get("type") == "DELETE"
                yield KeyEvent(_unb64(kv["key"]), None if deleted else _unb64(kv.get("value", "")),
                               int(kv.get("mod_revision", 0)))

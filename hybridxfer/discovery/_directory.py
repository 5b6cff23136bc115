"""Agents find each other through etcd: each publishes its record under a leased key.

Why a lease: a prefill worker that dies cannot say goodbye. Its key is tied to a lease that
the live process refreshes every third of its TTL; when the process is gone the lease
expires, etcd deletes the key, and every watcher learns it at once, so a decoder's pending
pulls from that peer fail fast instead of waiting out their deadline. A restarted worker
publishes a record with a new incarnation: watchers see it as another peer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType

import anyio
import anyio.abc
import attrs

from hybridxfer.discovery._etcd import EtcdClient, KeyEvent
from hybridxfer.discovery._record import PeerRecord
from hybridxfer.errors import ConnectError, HybridXferError, NotStartedError, PeerGoneError

__all__ = ["PeerDirectory", "PeerEvent"]


@attrs.frozen
class PeerEvent:
    """``record`` came up (``up`` True) or went away (its key was deleted or its lease expired)."""

    name: str
    up: bool
    record: PeerRecord | None


class PeerDirectory:
    """Publish this agent and watch the others, under ``/<namespace>/peers/`` of one etcd.

    Use as ``async with PeerDirectory(url) as directory:``; leaving the block revokes this
    agent's lease (its record disappears at once rather than after the TTL)."""

    def __init__(self, url: str, *, namespace: str = "hybridxfer", ttl_s: int = 10, timeout_s: float = 5.0) -> None:
        self._etcd = EtcdClient(url, timeout_s=timeout_s)
        self._prefix = f"/{namespace.strip('/')}/peers/".encode()
        self._ttl_s = max(2, int(ttl_s))     # etcd's lease granularity is seconds
        self._lease = 0
        self._group: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        return str(self._etcd.endpoint)

    async def __aenter__(self) -> PeerDirectory:
        async with contextlib.AsyncExitStack() as stack:
            self._group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._withdraw)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._group is not None and self._stack is not None
        self._group.cancel_scope.cancel()
        stack, self._stack, self._group = self._stack, None, None
        return await stack.__aexit__(exc_type, exc, tb)

    def _key(self, name: str) -> bytes:
        return self._prefix + name.encode()

    async def publish(self, record: PeerRecord) -> None:
        """Put ``record`` under a new lease and keep the lease alive until the directory closes."""
        if self._group is None:
            raise NotStartedError("PeerDirectory.publish() before `async with PeerDirectory(...)`")
        lease = await self._etcd.grant(self._ttl_s)
        await self._etcd.put(self._key(record.name), record.to_bytes(), lease=lease)
        self._lease = lease
        self._group.start_soon(self._keep_alive, lease, record)

    async def _keep_alive(self, lease: int, record: PeerRecord) -> None:
        """Refresh every third of the TTL; if etcd lost the lease (a long partition), publish again."""
        while True:
            await anyio.sleep(self._ttl_s / 3)
            try:
                ttl = await self._etcd.keep_alive(lease)
                if ttl <= 0:
                    lease = await self._etcd.grant(self._ttl_s)
                    await self._etcd.put(self._key(record.name), record.to_bytes(), lease=lease)
                    self._lease = lease
            except HybridXferError:
                continue        # etcd unreachable for now: the next round retries; peers see us go at TTL

    async def _withdraw(self) -> None:
        lease, self._lease = self._lease, 0
        if lease:
            with anyio.move_on_after(self._etcd.timeout_s, shield=True), contextlib.suppress(HybridXferError):
                await self._etcd.revoke(lease)

    async def peers(self) -> tuple[PeerRecord, ...]:
        """Every record published now, by name."""
        records, _ = await self._snapshot()
        return tuple(records[name] for name in sorted(records))

    async def _snapshot(self) -> tuple[dict[str, PeerRecord], int]:
        kvs, revision = await self._etcd.get_prefix(self._prefix)
        records = {}
        for kv in kvs:
            key = kv.key.decode(errors="replace")
            records[key[len(self._prefix):]] = PeerRecord.from_bytes(kv.value, key=key)
        return records, revision

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[PeerEvent]]:
        """The records published now (as ``up`` events), then every change, with no gap between."""
        records, revision = await self._snapshot()
        async with self._etcd.watch_prefix(self._prefix, start_revision=revision + 1) as events, \
                contextlib.aclosing(self._peer_events(records, events)) as peer_events:
            yield peer_events

    async def _peer_events(self, records: dict[str, PeerRecord],
                           events: AsyncIterator[KeyEvent]) -> AsyncGenerator[PeerEvent, None]:
        for name in sorted(records):
            yield PeerEvent(name, True, records[name])
        async for event in events:
            key = event.key.decode(errors="replace")
            name = key[len(self._prefix):]
            if event.value is None:
                yield PeerEvent(name, False, None)
            else:
                yield PeerEvent(name, True, PeerRecord.from_bytes(event.value, key=key))

    async def wait_for(self, name: str, *, timeout_s: float, accept: Callable[[PeerRecord], bool] | None = None) \
            -> PeerRecord:
        """The record published as ``name`` (waiting for it to appear, up to ``timeout_s``)."""
        try:
            with anyio.fail_after(timeout_s):
                async with self.watch() as events:
                    async for event in events:
                        if event.name == name and event.record is not None and (accept is None or accept(event.record)):
                            return event.record
        except TimeoutError as exc:
            raise ConnectError(f"no peer {name!r} published in etcd {self.url} within {timeout_s:g} s") from exc
        raise ConnectError(f"etcd {self.url}: watch ended before peer {name!r} appeared")

    @contextlib.asynccontextmanager
    async def guard(self, record: PeerRecord) -> AsyncIterator[None]:
        """Run the block while ``record``'s peer stays published; if its key is deleted, its lease
        expires or another incarnation replaces it, the block is cancelled and
        :class:`PeerGoneError` raised (a pending pull then fails at once, not at its deadline).

        Exceptions of the block pass through unchanged. If etcd itself cannot be reached, the
        block runs on under its own deadline: a directory outage must not fail transfers."""
        if self._group is None:
            raise NotStartedError("PeerDirectory.guard() before `async with PeerDirectory(...)`")
        reason: list[str] = []
        watcher = anyio.CancelScope()
        with anyio.CancelScope() as body:
            async def watch_peer() -> None:
                with watcher:
                    try:
                        reason.append(await self._wait_gone(record))
                    except HybridXferError:
                        return
                    body.cancel()

            self._group.start_soon(watch_peer)
            try:
                yield
            finally:
                watcher.cancel()
        if body.cancelled_caught:
            raise PeerGoneError(f"peer {record.name!r} (incarnation {record.incarnation}) is gone: {reason[0]}")

    async def _wait_gone(self, record: PeerRecord) -> str:
        """Returns, saying why, once ``record`` is no longer the live record of its name."""
        records, revision = await self._snapshot()
        now = records.get(record.name)
        if now is None:
            return "its etcd lease expired or it withdrew"
        if now.incarnation != record.incarnation:
            return f"it restarted as incarnation {now.incarnation}"
        key = self._key(record.name)
        async with self._etcd.watch_prefix(key, start_revision=revision + 1) as events:
            async for event in events:
                if event.key != key:
                    continue                        # another name sharing this one as a prefix
                if event.value is None:
                    return "its etcd lease expired or it withdrew"
                incarnation = PeerRecord.from_bytes(event.value, key=key.decode()).incarnation
                if incarnation != record.incarnation:
                    return f"it restarted as incarnation {incarnation}"
        return "the etcd watch ended"

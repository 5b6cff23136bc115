"""``Completions``: requests that are done, each recorded once, waitable and streamed.

Why one class: the agent (a D rank reported a request read) and the engine's prefill
connector (every expected D rank did) keep the same book — remember what completed, in
bounded memory; drop a duplicate; wake whoever waits for that request; hand each
completion once to the consumer of a stream; wake everybody when closing. Writing it
twice is how the two drift apart.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.errors import ClosedTransportError, TransferTimeout

__all__ = ["Completions"]

log = logging.getLogger("hybridxfer.execute")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Completions remembered for duplicate detection and late waiters.
REMEMBERED = 65536


class Completions(Generic[T]):
    """Completed items of ``owner`` (a name for messages), keyed for duplicates by ``key``
    and found by request id.

    A request may complete under several keys (one per D agent that read it); waiters for
    the request id are woken by the first. Memory stays bounded: the oldest ``remember``
    keys and request ids are forgotten first.
    """

    def __init__(self, owner: str, *, remember: int = REMEMBERED) -> None:
        self._owner = owner
        self._remember = remember
        self._keys: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self._first: collections.OrderedDict[str, T] = collections.OrderedDict()
        self._waiters: dict[str, anyio.Event] = {}
        self._send: MemoryObjectSendStream[T] | None = None
        self._receive: MemoryObjectReceiveStream[T] | None = None
        self._closed = False

    def add(self, request_id: str, item: T, *, key: Hashable | None = None) -> bool:
        """Record ``item`` as a completion of ``request_id``; ``False`` (and nothing done)
        if ``key`` (default: the request id) was recorded already."""
        key = request_id if key is None else key
        if key in self._keys:
            return False
        self._keys[key] = None
        _trim(self._keys, self._remember)
        if request_id not in self._first:
            self._first[request_id] = item
            _trim(self._first, self._remember)
        if self._send is not None:
            try:
                self._send.send_nowait(item)
            except anyio.WouldBlock:
                log.warning("%s: the completions consumer is behind; dropped %s", self._owner, key)
            except anyio.ClosedResourceError:
                pass  # closing: waiters are woken below or already were
        event = self._waiters.pop(request_id, None)
        if event is not None:
            event.set()
        return True

    def get(self, request_id: str) -> T | None:
        """The first completion recorded for ``request_id``, if it is remembered."""
        return self._first.get(request_id)

    def stream(self, *, buffer: float = REMEMBERED) -> AsyncIterator[T]:
        """The stream of completions recorded from its first call on (one consumer).

        Raises :class:`ClosedTransportError` once closed."""
        if self._closed:
            raise ClosedTransportError(f"{self._owner} is closed")
        if self._receive is None:
            self._send, self._receive = anyio.create_memory_object_stream[T](
                buffer if buffer == math.inf else int(buffer))
        return self._receive

    async def wait(self, request_id: str, *, timeout: float | None, message: str) -> T:
        """The first completion of ``request_id``, waiting up to ``timeout`` seconds.

        Raises :class:`TransferTimeout` (``message``) when it passes, and
        :class:`ClosedTransportError` when closed meanwhile. Cancellation leaves nothing
        behind."""
        while True:
            done = self._first.get(request_id)
            if done is not None:
                return done
            if self._closed:
                raise ClosedTransportError(f"{self._owner} is closed")
            event = self._waiters.setdefault(request_id, anyio.Event())
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await event.wait()
            if scope.cancelled_caught:
                if self._waiters.get(request_id) is event:
                    del self._waiters[request_id]
                raise TransferTimeout(message, request_id=request_id)

    def close(self) -> None:
        """End the stream and wake every waiter (they raise ClosedTransportError). Idempotent."""
        self._closed = True
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()


def _trim(book: collections.OrderedDict[K, V], size: int) -> None:
    while len(book) > size:
        book.popitem(last=False)

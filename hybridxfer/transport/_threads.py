"""Waiting, from the event loop, for work that a native library's own thread completes.

Why transports need it: NIXL progress, Mooncake calls and other native engines run on
threads the transport owns (one per engine or peer), and those threads must never block
on the event loop, while a cancelled wait on the loop must be able to walk away at once.
``anyio.to_thread`` runs a function on anyio's pool and ``anyio.from_thread.run_sync``
blocks the calling thread, so neither fits. Instead the thread completes a
``concurrent.futures.Future`` and wakes the loop through the loop's own thread-safe
``call_soon`` (asyncio ``call_soon_threadsafe``, trio ``run_sync_soon``), reached through
:func:`anyio.lowlevel.current_token`. Plugins use this instead of each writing its own.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

from hybridxfer.errors import TransportError

__all__ = ["LoopWaker", "wait_future"]

T = TypeVar("T")


class LoopWaker:
    """Schedules zero-argument callbacks on the event loop that created it, from any thread.

    Create it inside the loop (a transport's ``__aenter__``)."""

    def __init__(self) -> None:
        native = anyio.lowlevel.current_token().native_token
        call_soon = getattr(native, "call_soon_threadsafe", None) or getattr(native, "run_sync_soon", None)
        if call_soon is None:
            raise TransportError(f"cannot wake event loop {native!r} from another thread")
        self._call_soon: Callable[[Callable[[], object]], object] = call_soon

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop soon; dropped silently once the loop is gone."""
        try:
            self._call_soon(callback)
        except RuntimeError:
            pass


async def wait_future(waker: LoopWaker, future: concurrent.futures.Future[T]) -> T:
    """The future's result (or its exception), waiting without blocking the loop.

    Cancellation returns at once and leaves the future running: the caller decides what
    the abandoned work may still touch."""
    if future.done():
        await anyio.lowlevel.checkpoint()
        return future.result()
    event = anyio.Event()
    future.add_done_callback(lambda _f: waker.call_soon(event.set))
    await event.wait()
    return future.result()

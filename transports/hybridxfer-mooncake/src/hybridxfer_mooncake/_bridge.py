"""Wait, from the event loop, for a future that a plain thread completes.

Why not ``anyio.to_thread.run_sync``: Mooncake calls must run on the thread that owns
their engine (one per peer, see :mod:`._link`), and a cancelled wait must be able to
walk away at once while that thread goes on. The thread completes a
``concurrent.futures.Future``; we wake the loop with its own thread-safe ``call_soon``
(asyncio ``call_soon_threadsafe``, trio ``run_sync_soon``), never blocking the thread on
the loop.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

__all__ = ["LoopWaker", "wait_future"]

T = TypeVar("T")


class LoopWaker:
    """Schedules callbacks on the event loop that created it, from any thread."""

    def __init__(self) -> None:
        native = anyio.lowlevel.current_token().native_token
        call_soon = getattr(native, "call_soon_threadsafe", None) or getattr(native, "run_sync_soon", None)
        if call_soon is None:
            raise RuntimeError(f"unsupported event loop {native!r}")
        self._call_soon: Callable[[Callable[[], object]], object] = call_soon

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop soon; dropped silently once the loop is gone."""
        try:
            self._call_soon(callback)
        except RuntimeError:
            pass


async def wait_future(waker: LoopWaker, future: concurrent.futures.Future[T]) -> T:
    """The future's result, waiting without blocking the loop.

    Cancellation returns at once and leaves the future running: the caller decides
    what the abandoned work may still touch.
    """
    if future.done():
        await anyio.lowlevel.checkpoint()
        return future.result()
    event = anyio.Event()
    future.add_done_callback(lambda _f: waker.call_soon(event.set))
    await event.wait()
    return future.result()

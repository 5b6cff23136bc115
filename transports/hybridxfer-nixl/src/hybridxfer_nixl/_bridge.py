"""Hand results from the NIXL worker thread back to the event loop without blocking either.

Why not ``anyio.from_thread.run_sync``: it blocks the calling thread until the loop runs
the callback, and the worker thread is the one that drives NIXL progress — it must never
wait on the loop. Instead we schedule a callback with the native loop's thread-safe
``call_soon`` (asyncio ``call_soon_threadsafe``, trio ``TrioToken.run_sync_soon``), both
reached through anyio's :func:`anyio.lowlevel.current_token`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

from hybridxfer.errors import TransportError

__all__ = ["LoopCaller", "wait_future"]

T = TypeVar("T")


class LoopCaller:
    """Schedules zero-argument callbacks on the event loop that created it, from any thread."""

    def __init__(self) -> None:
        native = anyio.lowlevel.current_token().native_token
        call_soon = getattr(native, "call_soon_threadsafe", None) or getattr(native, "run_sync_soon", None)
        if call_soon is None:
            raise TransportError(f"the NIXL transport cannot run on event loop {native!r}")
        self._call_soon: Callable[[Callable[[], object]], object] = call_soon

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop thread soon; silently dropped once the loop closed."""
        try:
            self._call_soon(callback)
        except RuntimeError:
            pass


async def wait_future(caller: LoopCaller, future: concurrent.futures.Future[T]) -> T:
    """Wait for ``future`` (completed by another thread) without blocking the loop.

    On cancellation the future is left running; the caller decides what to undo.
    """
    if not future.done():
        event = anyio.Event()
        future.add_done_callback(lambda _f: caller.call_soon(event.set))
        await event.wait()
    else:
        await anyio.lowlevel.checkpoint()
    return future.result()

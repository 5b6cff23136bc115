"""A reading engine for one peer, on a thread of its own, with the staging memory it writes.

Three facts about the engine (0.3.13.post1, measured on 127.0.0.1, see docs/transports.md)
shape this module:

- Its calls block and take no timeout. A peer that is SIGSTOPped keeps a READ waiting
  30 s; the first call to a frozen peer (the P2P handshake) blocked 61 s *and held the
  engine's lock*, so a read to a healthy peer on the same engine waited as long. Hence
  one engine per peer, driven by one thread, which the event loop can stop waiting for.
- A failed batch returns while its other entries are still landing (one rejected entry:
  -1 after 0.7 ms, 200 MB written in the second that followed), and a call we stopped
  waiting for goes on writing. So the engine never writes memory we do not own: it reads
  into *staging* slabs registered with this engine only, and the transport copies a slab
  out to the caller's memory on the event loop, after a successful call, with no await in
  between — a read that returned, failed or was cancelled is never written again.
- Engine calls of one engine to one peer share a lane queue of 1024 entries (+1024
  pending admissions that expire after 1 s); more than that fails the batch and can leave
  the lanes to that peer failing every call for seconds. The thread runs one call at a
  time of at most 1024 entries, so the queue never overflows.

The thread lowers its own priority once the engine started: a synchronous engine call
busy-polls until it completes, and that CPU is better spent on the engine's I/O threads.

Lifetime: a link is *retired* after any failure or abandoned call. A retired link takes
no new work; its thread finishes the calls already queued, then destroys the engine
(which closes its sockets and stops its I/O) and only then drops the slabs. A call that
never returns keeps the engine and its slabs alive for good: leaked, never freed under
a writer.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer_mooncake._native import check, new_engine

__all__ = ["PeerLink"]

U8 = npt.NDArray[np.uint8]
SCRATCH_BYTES = 4096


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[object] = concurrent.futures.Future()


class PeerLink:
    """One engine, one thread, ``slab_count`` staging slabs and a small scratch buffer."""

    def __init__(self, *, host: str, target: str, slab_bytes: int, slab_count: int) -> None:
        self.target = target
        self.slab_bytes = slab_bytes
        self.slabs: list[U8] = [np.empty(slab_bytes, dtype=np.uint8) for _ in range(slab_count)]
        #: For the identity probe and notifications; written only by this link's thread.
        self.scratch = np.zeros(SCRATCH_BYTES, dtype=np.uint8)
        self._slab_count = slab_count
        self._free = list(range(slab_count))
        self._slab_ready = anyio.Semaphore(slab_count)
        self._host = host
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.retired = False
        self._thread = threading.Thread(target=self._serve, name=f"hybridxfer-mooncake {target}", daemon=True)
        self._thread.start()

    @property
    def slab_count(self) -> int:
        return self._slab_count

    def submit(self, fn: Callable[[Any], object]) -> concurrent.futures.Future[object]:
        """Run ``fn(engine)`` on the link's thread after the calls queued before it."""
        if self.retired:
            raise RuntimeError("link retired")
        job = _Job(fn)
        self._queue.put(job)
        return job.future

    async def acquire_slab(self) -> tuple[int, U8]:
        """A free slab (index, array); the array reference keeps it alive for the caller."""
        await self._slab_ready.acquire()
        index = self._free.pop()
        return index, self.slabs[index]

    def release_slab(self, index: int) -> None:
        """Only for a slab whose call returned successfully and was copied out."""
        self._free.append(index)
        self._slab_ready.release()

    def retire(self) -> None:
        """Take no new work; the thread drains what is queued, then tears the engine down."""
        if not self.retired:
            self.retired = True
            self._queue.put(None)

    def _serve(self) -> None:
        engine: Any = None
        startup: BaseException | None = None
        try:
            engine = new_engine(self._host)
            for buf in (*self.slabs, self.scratch):
                check("register_memory", engine.register_memory(int(buf.ctypes.data), int(buf.nbytes)), self._host)
        except BaseException as exc:  # reported to every caller below
            startup = exc
        _lower_own_priority()
        while (job := self._queue.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started: nothing was submitted
            if startup is not None:
                job.future.set_exception(startup)
                continue
            try:
                job.future.set_result(job.fn(engine))
            except BaseException as exc:
                job.future.set_exception(exc)
        # The engine goes first: once destroyed, nothing can write the slabs any more.
        del engine
        self.slabs = []


def _lower_own_priority() -> None:
    """Make this thread the last to get a CPU (nice 19; Linux nice values are per thread).

    Why: a synchronous engine call busy-polls its batch status until it completes, so
    the thread that made it spins a whole CPU doing nothing; on a small CPU budget that
    CPU is taken from the engine's own I/O threads and from the copy out of the previous
    slab. Called after the engine started, so its threads keep their priority.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: only slower

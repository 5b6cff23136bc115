"""The one thread that owns the NIXL agent: posts READs and WRITEs, polls them, drives progress.

Why a dedicated thread: measured on the target machines, ``transfer()`` on the cma path
blocks for the whole transfer, and NIXL's Python API offers no completion callback, only
polling. Running every agent call on one thread keeps the event loop free, lets us use
``NIXL_THREAD_SYNC_NONE`` (no agent locking), and lets us switch NIXL's own progress
thread off (measured 1.5–2× faster on 2 cores) because this loop drives progress: it
polls ``check_xfer_state`` for our READs and ``get_new_notifs`` for the target side —
without the latter, a peer reading *from* us can stall during connection wire-up.

A READ that exceeds its deadline, or whose caller was cancelled, has its handle released
here (``release_xfer_handle`` cancels an in-flight request); if NIXL refuses to release
it yet, the handle is kept and released as soon as it leaves ``PROC``.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nixl_cu12._api import (
    nixl_agent,
    nixl_agent_config,
    nixl_thread_sync_t,
)

from hybridxfer.errors import ClosedTransportError, TransferError, TransferTimeout

from hybridxfer_nixl._descs import DescriptorPair
from hybridxfer_nixl._logs import quiet_nixl_logging

quiet_nixl_logging()

__all__ = ["NixlWorker", "ReadJob"]

T = TypeVar("T")
_Command = Callable[[], None]


class ReadJob:
    """One posted READ (or WRITE: ``operation``). ``future`` resolves when NIXL no longer
    touches its memory."""

    __slots__ = ("cancel_requested", "deadline", "future", "handle", "operation", "peer", "timeout")

    def __init__(self, peer: str, timeout: float | None, operation: str = "READ") -> None:
        self.operation = operation
        self.peer = peer
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.handle: Any = None
        self.cancel_requested = False
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


def _where(job: ReadJob) -> str:
    """``READ from 'p'`` / ``WRITE to 'p'``, for messages."""
    return f"{job.operation} {'from' if job.operation == 'READ' else 'to'} {job.peer!r}"


def _translate(job: ReadJob, exc: BaseException) -> TransferError:
    err = TransferError(f"NIXL {_where(job)} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class NixlWorker:
    """Owns a ``nixl_agent`` on a private thread; every agent call goes through here."""

    def __init__(
        self,
        agent_name: str,
        *,
        progress_thread: bool,
        on_notifications: Callable[[list[tuple[str, bytes]]], None],
        max_idle_sleep: float = 0.002,
    ) -> None:
        self.agent_name = agent_name
        self._progress_thread = progress_thread
        self._on_notifications = on_notifications
        self._max_idle_sleep = max_idle_sleep
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._jobs: list[ReadJob] = []
        self._agent: Any = None
        #: Why commands can no longer run (agent failed to start, or stopped).
        self._dead: BaseException | None = None
        self._stopped = concurrent.futures.Future[None]()
        self._thread = threading.Thread(target=self._run, name=f"nixl-{agent_name}", daemon=True)

    # -- called from the event loop thread ------------------------------------------

    def start(self) -> concurrent.futures.Future[None]:
        self._thread.start()
        return self.call(lambda agent: None)

    def call(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(agent)`` on the worker thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def command() -> None:
            if not future.set_running_or_notify_cancel():
                return
            if self._dead is not None:
                future.set_exception(self._dead)
                return
            try:
                future.set_result(fn(self._agent))
            except BaseException as exc:
                future.set_exception(exc)

        self._commands.put(command)
        return future

    def start_read(self, descs: DescriptorPair, peer: str, timeout: float | None,
                   operation: str = "READ") -> ReadJob:
        """Post a READ (or, with ``operation="WRITE"``, a WRITE) of ``descs``."""
        job = ReadJob(peer, timeout, operation)
        self._commands.put(lambda: self._post(job, descs))
        return job

    def cancel(self, job: ReadJob) -> None:
        def command() -> None:
            job.cancel_requested = True

        self._commands.put(command)

    def stop(self) -> concurrent.futures.Future[None]:
        """Release every handle, deregister, drop the agent; resolves when the thread ended."""
        self._commands.put(None)
        return self._stopped

    # -- worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            config = nixl_agent_config(
                enable_prog_thread=self._progress_thread,
                backends=["UCX"],
                sync_mode=nixl_thread_sync_t.NIXL_THREAD_SYNC_NONE,
            )
            self._agent = nixl_agent(self.agent_name, config)
        except BaseException as exc:  # surfaced through the start() future
            self._fail_startup(exc)
            return
        idle = 0.0
        try:
            while True:
                busy = False
                while True:
                    try:
                        command = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if command is None:
                        return
                    command()
                    busy = True
                if self._jobs:
                    self._poll_jobs()
                    busy = True
                notes = self._agent.get_new_notifs()
                if notes:
                    self._deliver(notes)
                    busy = True
                if busy:
                    idle = 0.0
                    if self._jobs:
                        time.sleep(0)  # let the loop thread have the GIL between polls
                    continue
                idle = min(self._max_idle_sleep, max(idle * 2, 20e-6))
                try:
                    command = self._commands.get(timeout=idle)
                except queue.Empty:
                    continue
                if command is None:
                    return
                command()
        finally:
            self._teardown()

    def _fail_startup(self, exc: BaseException) -> None:
        self._dead = exc
        self._drain()
        self._stopped.set_result(None)

    def _drain(self) -> None:
        """Run what is still queued; with ``_dead`` set, each command fails its caller."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None:
                command()

    def _post(self, job: ReadJob, descs: DescriptorPair) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if self._dead is not None:
            job.future.set_exception(TransferError(f"NIXL agent unavailable: {self._dead}"))
            return
        agent = self._agent
        try:
            local = agent.get_xfer_descs(descs.local, descs.local_mem)
            remote = agent.get_xfer_descs(descs.remote, descs.remote_mem)
            job.handle = agent.initialize_xfer(job.operation, local, remote, job.peer)
            state = agent.transfer(job.handle)
        except Exception as exc:
            self._finish(job, _translate(job, exc))
            return
        if state == "PROC":
            self._jobs.append(job)
        else:
            self._finish(job, None if state == "DONE" else TransferError(f"NIXL {_where(job)} failed to post"))

    def _poll_jobs(self) -> None:
        agent = self._agent
        now = time.monotonic()
        still: list[ReadJob] = []
        for job in self._jobs:
            try:
                state = agent.check_xfer_state(job.handle)
            except Exception as exc:
                self._finish(job, _translate(job, exc))
                continue
            if state == "DONE":
                self._finish(job, None)
            elif state != "PROC":
                self._finish(job, TransferError(f"NIXL {_where(job)} failed (state {state})"))
            elif job.cancel_requested:
                if not self._try_release(job, TransferError(f"{job.operation} cancelled")):
                    still.append(job)
            elif job.deadline is not None and now > job.deadline:
                timeout = TransferTimeout(
                    f"NIXL {_where(job)} did not finish within {job.timeout} s; "
                    "the peer may be stalled"
                )
                if not self._try_release(job, timeout):
                    job.cancel_requested = True
                    job.deadline = None
                    still.append(job)
            else:
                still.append(job)
        self._jobs = still

    def _try_release(self, job: ReadJob, error: TransferError) -> bool:
        try:
            self._agent.release_xfer_handle(job.handle)
        except Exception:
            return False  # NIXL could not cancel it yet; retry when it leaves PROC
        job.handle = None
        job.future.set_exception(error)
        return True

    def _finish(self, job: ReadJob, error: TransferError | None) -> None:
        if job.handle is not None:
            try:
                self._agent.release_xfer_handle(job.handle)
            except Exception as exc:
                if error is None:
                    error = _translate(job, exc)
            job.handle = None
        if job.future.done():
            return
        if error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(error)

    def _deliver(self, notes: dict[Any, list[bytes]]) -> None:
        batch: list[tuple[str, bytes]] = []
        for sender, messages in notes.items():
            name = sender.decode() if isinstance(sender, bytes) else str(sender)
            batch.extend((name, bytes(m)) for m in messages)
        if batch:
            self._on_notifications(batch)

    def _teardown(self) -> None:
        for job in self._jobs:
            self._finish(job, TransferError(f"transport closed while the {job.operation} was in flight"))
        self._jobs.clear()
        self._dead = ClosedTransportError("NIXL agent closed")
        self._drain()  # fail anything queued after stop() so no caller waits forever
        self._agent = None
        self._stopped.set_result(None)

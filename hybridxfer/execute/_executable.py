"""A bound plan ready to run: ``await executable.execute(timeout=...)``.

Why a separate object: the expensive part (mapping the plan's region names onto each
peer's registration order, splitting by the transport's descriptor limit) happens once in
``Agent.prepare``; ``execute`` only moves bytes. It reads from every source rank
concurrently and, only if *all* of them succeeded, tells every P rank in
``plan.notify_ranks`` that the request is done. Any failure raises
:class:`~hybridxfer.errors.TransferError` naming the request, the source rank and the
destination blocks that are now invalid — a failed request is never reported received.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping

import anyio
import attrs

from hybridxfer.errors import TransferError, TransferTimeout
from hybridxfer.execute._info import ControlMessage, encode_control
from hybridxfer.execute._stats import StatisticsRecorder
from hybridxfer.plan import TransferPlan
from hybridxfer.transport import PeerHandle, ReadBatch, Transport

__all__ = ["ExecutablePlan", "TransferResult"]

log = logging.getLogger("hybridxfer.execute")

#: How long notifying P may take after the bytes landed (they are valid regardless).
NOTIFY_TIMEOUT = 10.0


class _State(enum.Enum):
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@attrs.frozen
class TransferResult:
    """What one successful ``execute`` moved."""

    request_id: str
    bytes: int
    descriptors: int
    seconds: float
    notified_ranks: tuple[int, ...]


class ExecutablePlan:
    """One request's reads, bound to connected peers. Create with ``Agent.prepare``."""

    def __init__(
        self,
        *,
        plan: TransferPlan,
        request_id: str,
        transport: Transport,
        batches: Mapping[int, tuple[PeerHandle, tuple[ReadBatch, ...]]],
        notify_peers: Mapping[int, PeerHandle],
        stats: StatisticsRecorder,
        on_success: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.request_id = request_id
        self._transport = transport
        self._batches = batches
        self._notify_peers = notify_peers
        self._stats = stats
        self._on_success = on_success
        self._state = _State.READY

    @property
    def state(self) -> str:
        """``ready``, ``running``, ``done`` or ``failed`` (a failed plan may be executed again)."""
        return self._state.value

    def _error(self, message: str, rank: int | None, cls: type[TransferError] = TransferError) -> TransferError:
        return cls(message, request_id=self.request_id, source_rank=rank,
                   invalid_blocks=dict(self.plan.dst_blocks))

    async def execute(self, *, timeout: float | None = None) -> TransferResult:
        """Read every source rank concurrently, then notify the P ranks.

        Raises :class:`TransferTimeout` if the reads do not finish within ``timeout``
        seconds and :class:`TransferError` on any other failure; either way the plan's
        destination blocks are invalid and P is not notified. Running a plan that already
        succeeded raises (P may have freed its blocks). Cancellation leaves the destination
        blocks undefined, notifies nobody, marks the plan failed (it may be re-executed)
        and leaves the transport usable.
        """
        if self._state is _State.DONE:
            raise self._error("request already completed; P may have freed its blocks", None)
        if self._state is _State.RUNNING:
            raise self._error("request is already executing", None)
        self._state = _State.RUNNING
        started = time.perf_counter()
        pending = set(self._batches)
        failures: list[TransferError] = []
        try:
            with anyio.move_on_after(timeout if timeout is not None else float("inf")) as deadline:
                async with anyio.create_task_group() as tg:
                    for rank in sorted(self._batches):
                        tg.start_soon(self._read_rank, rank, pending, failures, tg.cancel_scope)
        except BaseException:
            self._state = _State.FAILED
            self._stats.counts["cancellations"] += 1
            log.info("request %s cancelled; destination blocks invalid", self.request_id)
            raise
        if failures or deadline.cancelled_caught:
            self._state = _State.FAILED
            self._stats.counts["failures"] += 1
            if failures:
                first = failures[0]
                log.info("request %s failed: %s", self.request_id, first)
                raise first
            self._stats.counts["timeouts"] += 1
            stuck = min(pending) if pending else None
            log.info("request %s timed out after %ss waiting for ranks %s", self.request_id, timeout, sorted(pending))
            raise self._error(f"transfer timed out after {timeout}s (ranks still reading: {sorted(pending)})",
                              stuck, TransferTimeout)
        seconds = time.perf_counter() - started
        self._state = _State.DONE
        self._on_success(self.request_id)
        nbytes = sum(b.total_bytes for _, bs in self._batches.values() for b in bs)
        ndesc = sum(len(b) for _, bs in self._batches.values() for b in bs)
        self._stats.transfer_done(nbytes, ndesc, seconds)
        notified = await self._notify_all()
        log.debug("request %s: %d bytes, %d descriptors in %.6fs", self.request_id, nbytes, ndesc, seconds)
        return TransferResult(self.request_id, nbytes, ndesc, seconds, notified)

    async def _read_rank(self, rank: int, pending: set[int], failures: list[TransferError],
                         scope: anyio.CancelScope) -> None:
        peer, batches = self._batches[rank]
        try:
            for batch in batches:
                await self._transport.read(peer, batch)
        except Exception as exc:  # every transport failure becomes one typed error
            err = self._error(f"read from source rank {rank} ({peer.name!r}) failed: {exc}", rank)
            err.__cause__ = exc
            failures.append(err)
            scope.cancel()
            return
        pending.discard(rank)

    async def _notify_all(self) -> tuple[int, ...]:
        """Tell each P rank the request is done. Failures are logged, never raised: the
        bytes are valid; P's own ``wait_request_done`` timeout covers a lost notification.
        Cancellation: some ranks may have been notified, others not."""
        message = encode_control(ControlMessage("done", self.request_id, self.plan.dst_rank))
        notified: list[int] = []

        async def one(rank: int, peer: PeerHandle) -> None:
            try:
                await self._transport.notify(peer, message)
            except Exception as exc:
                self._stats.counts["notification_failures"] += 1
                log.warning("request %s: could not notify source rank %d (%s): %s",
                            self.request_id, rank, peer.name, exc)
                return
            self._stats.counts["notifications_sent"] += 1
            notified.append(rank)

        with anyio.move_on_after(NOTIFY_TIMEOUT) as scope:
            async with anyio.create_task_group() as tg:
                for rank, peer in sorted(self._notify_peers.items()):
                    tg.start_soon(one, rank, peer)
        if scope.cancelled_caught:
            missing = sorted(set(self._notify_peers) - set(notified))
            self._stats.counts["notification_failures"] += len(missing)
            log.warning("request %s: notifying ranks %s timed out", self.request_id, missing)
        return tuple(sorted(notified))

"""A bound plan ready to run: ``await executable.execute(timeout=...)``.

Why a separate object: the expensive part happens once, when ``Agent.prepare`` builds it:
the plan's :class:`~hybridxfer.descriptors.Descriptors` get their region columns mapped
onto each peer's and our registration order (one gather for all rows) and are split once —
per source rank, at the transport's ``max_descriptors_per_read``. ``execute`` then only
hands those parts to the transport as they are. It reads from every source rank
concurrently and, only if *all* of them succeeded, tells every P rank in
``plan.notify_ranks`` that the request is done. Any failure raises
:class:`~hybridxfer.errors.TransferError` (a :class:`~hybridxfer.errors.TransferTimeout`
when a deadline passed, here or in the transport) naming the request, the source rank and
the destination blocks that are now invalid, with the transport's own error as
``__cause__`` — a failed request is never reported received.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import anyio
import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import ConnectError, IncompatibleLayoutsError, TransferError, TransferTimeout
from hybridxfer.execute._done import notify_done
from hybridxfer.execute._stats import StatisticsRecorder
from hybridxfer.plan import TransferPlan
from hybridxfer.transport import PeerHandle, Transport

__all__ = ["ExecutablePlan", "TransferResult"]

log = logging.getLogger("hybridxfer.execute")


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
    """One request's reads, bound to connected peers. Create with ``Agent.prepare``.

    ``peers`` maps source ranks to connected handles (every rank the plan reads from or
    notifies), ``local_regions`` names our registered regions in registration order.
    Raises :class:`ConnectError` if a source or notify rank has no peer and
    :class:`IncompatibleLayoutsError` if a region name is unknown on either side.
    """

    def __init__(
        self,
        *,
        plan: TransferPlan,
        request_id: str,
        transport: Transport,
        peers: Mapping[int, PeerHandle],
        local_regions: Sequence[str],
        stats: StatisticsRecorder,
        on_success: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.request_id = request_id
        self._transport = transport
        self._reads = _split_reads(plan, peers, local_regions, transport.capabilities.max_descriptors_per_read)
        self._notify_peers = _notify_peers(plan, peers)
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
        seconds (or a transport's own deadline passed) and :class:`TransferError` on any
        other failure, with the transport's error as ``__cause__``; either way the plan's
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
        pending = set(self._reads)
        failures: list[TransferError] = []
        try:
            with anyio.move_on_after(timeout if timeout is not None else float("inf")) as deadline:
                async with anyio.create_task_group() as tg:
                    for rank in sorted(self._reads):
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
                if isinstance(first, TransferTimeout):  # the transport's own deadline
                    self._stats.counts["timeouts"] += 1
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
        nbytes = sum(part.total_bytes for _, parts in self._reads.values() for part in parts)
        ndesc = sum(len(part) for _, parts in self._reads.values() for part in parts)
        self._stats.transfer_done(nbytes, ndesc, seconds)
        notified = await self._notify_all(seconds)
        log.debug("request %s: %d bytes, %d descriptors in %.6fs", self.request_id, nbytes, ndesc, seconds)
        return TransferResult(self.request_id, nbytes, ndesc, seconds, notified)

    async def _read_rank(self, rank: int, pending: set[int], failures: list[TransferError],
                         scope: anyio.CancelScope) -> None:
        peer, parts = self._reads[rank]
        try:
            for part in parts:
                await self._transport.read(peer, part)
        except Exception as exc:  # the boundary: every failure names the request, keeps its class
            cls = TransferTimeout if isinstance(exc, TransferTimeout) else TransferError
            err = self._error(f"read from source rank {rank} ({peer.name!r}) failed: {exc}", rank, cls)
            err.__cause__ = exc
            failures.append(err)
            scope.cancel()
            return
        pending.discard(rank)

    async def _notify_all(self, seconds: float) -> tuple[int, ...]:
        """Tell each P rank the request is done (:func:`notify_done`: logged, never raised).
        Cancellation: some ranks may have been notified, others not."""
        notified: list[int] = []
        await notify_done(self._transport, self.plan, self.request_id, self._notify_peers, seconds, self._stats,
                          notified)
        return tuple(sorted(notified))


def _split_reads(plan: TransferPlan, peers: Mapping[int, PeerHandle], local_regions: Sequence[str],
                 limit: int | None) -> dict[int, tuple[PeerHandle, tuple[Descriptors, ...]]]:
    """The plan's rows with regions in registration order, split per rank at ``limit`` rows."""
    d = plan.descriptors
    ranks = d.source_ranks
    for rank in ranks:
        if rank not in peers:
            raise ConnectError(f"no connected peer for source rank {rank}")
    n_src, n_dst = len(plan.src_region_names), len(plan.dst_region_names)
    if len(d) and (int(d.src_region.min()) < 0 or int(d.src_region.max()) >= n_src
                   or int(d.dst_region.min()) < 0 or int(d.dst_region.max()) >= n_dst):
        raise IncompatibleLayoutsError(
            f"plan rows name regions outside its {n_src} source / {n_dst} destination region names")
    dst_map = _index_map(plan.dst_region_names, local_regions, "local")
    src_maps = np.zeros((max(ranks, default=0) + 1, n_src), dtype=np.int64)
    for rank in ranks:  # only the regions read from this rank (a pipeline stage holds a subset)
        used = np.unique(d.src_region[d.src_rank == rank])
        src_maps[rank, used] = _index_map([plan.src_region_names[i] for i in used.tolist()],
                                          peers[rank].region_names, f"peer {peers[rank].name!r}")
    mapped = attrs.evolve(d, src_region=src_maps[d.src_rank, d.src_region], dst_region=dst_map[d.dst_region])
    return {rank: (peers[rank], part.split(limit)) for rank, part in mapped.by_source().items()}


def _notify_peers(plan: TransferPlan, peers: Mapping[int, PeerHandle]) -> dict[int, PeerHandle]:
    missing = [rank for rank in plan.notify_ranks if rank not in peers]
    if missing:
        raise ConnectError(f"no connected peer for notify rank {missing[0]}")
    return {rank: peers[rank] for rank in plan.notify_ranks}


def _index_map(names: Sequence[str], registered: Sequence[str], where: str) -> npt.NDArray[np.int64]:
    index = {n: i for i, n in enumerate(registered)}
    missing = [n for n in names if n not in index]
    if missing:
        raise IncompatibleLayoutsError(f"{where} has no registered region named {missing}")
    return np.array([index[n] for n in names], dtype=np.int64)

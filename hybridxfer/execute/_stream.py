"""D side of a streamed transfer: layers land while P is still computing the prompt.

Why a stream and not an earlier bulk read: P finishes a request layer by layer, and a
layer that is final may move while later layers are still computing, so the transfer
hides behind prefill instead of following it. The planner says which rows a readiness
makes movable (:class:`~hybridxfer.plan.StreamSchedule`); this module makes them move and
keeps the books:

* **pull** — D subscribes to each source P rank; P forwards every readiness its engine
  reports (:meth:`~hybridxfer.execute.Agent.mark_ready`); D reads the rows it made movable
  from that rank, while further readiness arrives.
* **push** — the subscription also carries what P needs to rebuild D's schedule; P writes
  its rows into D's memory as its layers finish and then says which readiness it served;
  D never reads. Where D's transport keeps grants, each writing P rank is granted write
  access to exactly the D bytes of its own rows, for as long as the stream runs: the grant
  is withdrawn the moment the stream succeeds, fails or is cancelled.
* **bulk** (pull with ``bulk=True``) — D reads nothing until a source rank has reported
  every layer final for the whole prompt, then all of that rank's rows at once: bulk's
  timing behind the stream's handle, for prompts too short for streaming to pay.

Each source rank is followed with its own copy of the schedule, advanced only by that
rank's readiness and keeping only that rank's rows, so a fast rank never lets D read a
slower rank's unfinished rows. A layer group *landed* when every source rank has served
(D read, or P wrote and said so) every row of it. Bytes are recorded as they land
(:class:`~hybridxfer.execute.LandedBytes`): a failure reports exactly the D blocks holding
a byte that did not (:func:`unlanded_blocks`), and success is declared only when every
byte of the plan is recorded — never from the schedule's word alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import attrs
import numpy as np
import numpy.typing as npt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError, StreamedTransferError, TransferTimeout
from hybridxfer.execute._done import NOTIFY_TIMEOUT, notify_done
from hybridxfer.execute._executable import TransferResult
from hybridxfer.execute._grants import grant_writes, revoke_request
from hybridxfer.execute._landed import LandedBytes, LandedTransport
from hybridxfer.execute._stats import StatisticsRecorder
from hybridxfer.execute._stream_blocks import unlanded_blocks
from hybridxfer.execute._stream_wire import StreamMessage, StreamMode, encode_stream
from hybridxfer.layout import RankLayout
from hybridxfer.plan import Readiness, StreamSchedule
from hybridxfer.transport import PeerHandle, Transport

__all__ = ["StreamedTransfer"]

log = logging.getLogger("hybridxfer.execute")


Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@attrs.define
class _Source:
    """One source P rank of the stream: its peer, schedule copy, inbox and progress."""

    rank: int
    handle: PeerHandle
    schedule: StreamSchedule
    src_map: npt.NDArray[np.int64]
    inbox: MemoryObjectSendStream[StreamMessage]
    outbox: MemoryObjectReceiveStream[StreamMessage]
    landed_groups: set[str] = attrs.field(factory=set)
    #: Groups the schedule said were wholly handed out (and so, once read, served).
    completed_groups: set[str] = attrs.field(factory=set)
    #: Per layer: the furthest readiness given to the schedule, and the furthest served.
    seen: dict[str, int] = attrs.field(factory=dict)
    full: dict[str, int] = attrs.field(factory=dict)


class StreamedTransfer:
    """One request streaming into this D rank. Create with ``Agent.prepare_stream``.

    It starts at once, in the agent's background tasks, and runs until every byte landed,
    it failed, it was cancelled (:meth:`cancel`, or leaving ``async with``) or the agent
    closed. Waiting is separate from running: a task cancelled while it waits leaves the
    stream running; a wait whose ``timeout`` passes fails the stream.
    """

    def __init__(self, *, schedule: StreamSchedule, request_id: str, stream_id: str, mode: StreamMode,
                 transport: Transport, peers: Mapping[int, PeerHandle], local_regions: tuple[str, ...],
                 layout: RankLayout, stats: StatisticsRecorder, on_success: Callable[[str], None],
                 on_end: Callable[[StreamedTransfer], None], deadline: float,
                 subscription: StreamMessage, spawn: Spawn, bulk: bool = False,
                 writers: Mapping[int, str] | None = None, lease: float | None = None) -> None:
        plan = schedule.plan
        self.schedule, self.plan = schedule, plan
        self.request_id, self.stream_id, self.mode = request_id, stream_id, mode
        #: Pull with nothing read before a source rank reported the whole prompt final.
        self.bulk = bulk
        self._transport = transport
        self._layout = layout
        self._stats, self._on_success, self._on_end, self._spawn = stats, on_success, on_end, spawn
        self._subscription = subscription
        self._landed = LandedBytes(local_regions)
        self._reader = LandedTransport(transport, self._landed)
        self._limit = transport.capabilities.max_descriptors_per_read
        self._dst_map = _index_map(plan.dst_region_names, local_regions, "local")
        ranks = plan.source_ranks
        missing = [r for r in (*ranks, *plan.notify_ranks) if r not in peers]
        if missing:
            raise InvalidArgumentError(f"stream {request_id!r}: no connected peer for P rank {missing[0]}")
        self._notify = {r: peers[r] for r in plan.notify_ranks}
        self._sources: dict[int, _Source] = {}
        for i, rank in enumerate(ranks):
            send, receive = anyio.create_memory_object_stream[StreamMessage](math.inf)
            own = schedule if i == len(ranks) - 1 else schedule.fork()  # independent state, shared arrays
            self._sources[rank] = _Source(rank, peers[rank], own, _src_map(plan, rank, peers[rank]), send, receive)
        self._by_name = {s.handle.name: s for s in self._sources.values()}
        self._group_layers = {g.name: tuple(g.layers) for g in schedule.groups}
        self._layer_groups: dict[str, set[str]] = {}  # a layer lands once every group holding it did
        for g, layers in self._group_layers.items():
            for layer in layers:
                self._layer_groups.setdefault(layer, set()).add(g)
        self._landed_groups: set[str] = set()
        self._landed_layers: set[str] = set()
        self._changed = anyio.Event()
        self._scope = anyio.CancelScope(deadline=deadline)
        self._error: StreamedTransferError | None = None
        self._result: TransferResult | None = None
        self._started = time.perf_counter()
        self._unsubscribed = False
        self._cancelled = False
        self._ended = False
        self._all_landed = False
        self._callbacks: list[Callable[[StreamedTransfer], None]] = []
        self._granted: list[str] = []  # peers granted writes (push), withdrawn as the stream ends
        if mode == "push":
            self._grant_writes(writers or {}, lease)

    # -- what the engine sees -------------------------------------------------------------
    @property
    def state(self) -> str:
        """``running``, ``done`` or ``failed`` (a cancelled stream is failed)."""
        return "done" if self._result is not None else "failed" if self._error is not None else "running"

    @property
    def landed_layers(self) -> frozenset[str]:
        """Layers every byte of which has landed (they stay valid even if the stream fails)."""
        return frozenset(self._landed_layers)

    @property
    def landed(self) -> LandedBytes:
        """The destination bytes known to have landed so far (D's regions)."""
        return self._landed

    @property
    def result(self) -> TransferResult | None:
        """What moved, once the stream completed (else ``None``)."""
        return self._result

    @property
    def error(self) -> StreamedTransferError | None:
        """Why the stream failed, once it did (else ``None``)."""
        return self._error

    def add_done_callback(self, callback: Callable[[StreamedTransfer], None]) -> None:
        """Call ``callback(stream)`` once the stream has ended (completed or failed; at once if
        it has), from the stream's task. It must return quickly; what it raises is logged."""
        if self._ended:
            _call(callback, self)
        else:
            self._callbacks.append(callback)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` ended the stream (before it completed)."""
        return self._cancelled

    def invalid_blocks(self) -> dict[str, tuple[int, ...]]:
        """Per D KV group, the blocks holding a planned byte not (yet) known to have landed."""
        return unlanded_blocks(self._layout, self.plan, self._landed, self.plan.dst_blocks)

    async def wait_for_layer(self, layer: str, *, timeout: float | None = None) -> None:
        """Return once ``layer`` has landed (vLLM's ``wait_for_layer_load``).

        Raises :class:`~hybridxfer.errors.StreamedTransferError` if the stream failed before
        it landed, or ``timeout`` seconds passed (that fails the stream), and
        :class:`InvalidArgumentError` for a layer this rank does not hold. Cancellation
        leaves the stream running.
        """
        if layer not in self._layer_groups:
            raise InvalidArgumentError(f"stream {self.request_id!r}: no layer {layer!r} in its schedule")
        await self._wait_until(lambda: layer in self._landed_layers, timeout, f"layer {layer!r}")

    async def wait(self, *, timeout: float | None = None) -> TransferResult:
        """Wait until every byte landed and the notify ranks were told; the result.

        Raises :class:`~hybridxfer.errors.StreamedTransferError` (timed out, failed,
        cancelled). Cancellation leaves the stream running.
        """
        await self._wait_until(lambda: self._result is not None, timeout, "the whole request")
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the stream: nothing more is read, P ranks are told to stop, waiters raise.
        Layers already landed stay valid. Does nothing once the stream ended."""
        if self._error is None and self._result is None:
            self._cancelled = True
        self._fail("stream cancelled", None)

    async def __aenter__(self) -> StreamedTransfer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    async def _wait_until(self, ready: Callable[[], bool], timeout: float | None, what: str) -> None:
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            while not ready():
                if self._error is not None:
                    raise self._error
                changed = self._changed
                await changed.wait()
        if scope.cancelled_caught and not ready():
            if self._all_landed:  # too late to fail: every byte is in place, P ranks are being told
                while self._result is None and self._error is None:
                    await self._changed.wait()
                return
            cause = TransferTimeout(f"waiting for {what} timed out after {timeout}s", request_id=self.request_id)
            self._fail(f"waiting for {what} timed out after {timeout}s", cause, timed_out=True)
        if self._error is not None and not ready():
            raise self._error

    # -- the run ------------------------------------------------------------------------------
    def deliver(self, peer_name: str, message: StreamMessage) -> None:
        """A message of ours from P (the agent's notification pump calls this)."""
        source = self._by_name.get(peer_name)
        if source is None:
            log.warning("stream %s: message from %s, not one of its source ranks", self.request_id, peer_name)
            return
        try:
            source.inbox.send_nowait(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the stream ended

    async def run(self) -> None:
        """The stream's task (in the agent's task group). Ends the stream, one way or another."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for source in self._sources.values():
                        tg.start_soon(self._follow, source)
                if self._error is None:
                    try:
                        await self._complete()
                    except Exception as exc:
                        self._fail(f"completing the stream failed: {exc}", exc)
            if self._scope.cancelled_caught and self._error is None and self._result is None:
                cause = TransferTimeout("stream deadline passed", request_id=self.request_id)
                self._fail("stream deadline passed", cause, timed_out=True)
        finally:
            if self._error is None and self._result is None:  # the agent is closing
                self._fail("the agent closed", None)
            self._revoke_writes()
            for source in self._sources.values():
                source.inbox.close()
                source.outbox.close()
            self._ended = True
            self._on_end(self)
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                _call(callback, self)

    async def _follow(self, source: _Source) -> None:
        """One P rank's part; a failure of it fails the stream (and so stops the others)."""
        try:
            await self._serve(source)
        except _SourceFailed as exc:
            self._fail(exc.message, exc.__cause__, rank=source.rank)
        except Exception as exc:  # the boundary: whatever broke, the stream names the rank
            self._fail(f"P rank {source.rank} ({source.handle.name!r}): {exc}", exc, rank=source.rank)

    async def _serve(self, source: _Source) -> None:
        """Subscribe to one P rank, then serve its readiness in order until it is complete."""
        message = attrs.evolve(self._subscription, expect_bytes=self.plan.statistics.bytes_by_source.get(
            source.rank, 0), expect_rows=self.plan.statistics.descriptors_by_source.get(source.rank, 0))
        try:
            with anyio.fail_after(NOTIFY_TIMEOUT):
                await self._transport.notify(source.handle, encode_stream(message))
        except Exception as exc:
            raise _SourceFailed(f"subscribing to P rank {source.rank} failed: {exc}") from exc
        self._mark_if_complete(source)
        while not source.schedule.complete():
            batch = [await source.outbox.receive()]
            while True:  # whatever else arrived meanwhile moves in the same reads
                try:
                    batch.append(source.outbox.receive_nowait())
                except anyio.WouldBlock:
                    break
            rows: list[Descriptors] = []
            completed: list[str] = []
            released = False
            for msg in batch:
                if msg.kind == "abort":
                    raise _SourceFailed(f"P rank {source.rank} aborted the stream: {msg.reason}")
                if msg.kind != ("ready" if self.mode == "pull" else "landed"):
                    continue
                # what the schedule has not seen from this rank; tokens beyond the prompt are the prompt
                tokens = min(msg.tokens_through, self.schedule.num_tokens)
                news = frozenset(n for n in msg.layers if source.seen.get(n, -1) < tokens)
                if news:
                    source.seen.update(dict.fromkeys(news, tokens))
                    if self.bulk:
                        continue  # nothing moves before the whole prompt is final
                    step = source.schedule.advance_step(Readiness(news, tokens))
                    rows.append(self._mine(source, step.rows))
                    completed.extend(step.completed)
            total = self.schedule.num_tokens
            if self.bulk and all(source.seen.get(layer, -1) >= total for layer in self._layer_groups):
                step = source.schedule.advance_step(Readiness(frozenset(self._layer_groups), total))
                rows.append(self._mine(source, step.rows))
                completed.extend(step.completed)
                released = True
            moved = Descriptors.concat(rows) if rows else Descriptors.empty()
            if len(moved):
                if self.mode == "pull":
                    try:
                        for part in moved.split(self._limit):
                            await self._reader.read(source.handle, part)
                    except Exception as exc:
                        raise _SourceFailed(f"read from P rank {source.rank} ({source.handle.name!r}) "
                                            f"failed: {exc}") from exc
                else:
                    self._landed.add(moved)  # P wrote these before it said so
            for msg in batch:
                if msg.kind in ("ready", "landed") and (released or not self.bulk):
                    for layer in msg.layers:
                        source.full[layer] = max(source.full.get(layer, -1), min(msg.tokens_through,
                                                                                 self.schedule.num_tokens))
            source.completed_groups.update(completed)  # their rows from this rank are in place now
            self._mark_if_complete(source)

    def _mine(self, source: _Source, rows: Descriptors) -> Descriptors:
        """This rank's rows of a step, in transport indexing (its regions, ours)."""
        mine = rows.by_source().get(source.rank)
        if mine is None or not len(mine):
            return Descriptors.empty()
        return attrs.evolve(mine, src_region=source.src_map[mine.src_region],
                            dst_region=self._dst_map[mine.dst_region])

    def _mark_if_complete(self, source: _Source) -> None:
        """Record the groups this rank has served wholly; a layer landed once every rank did."""
        total = self.schedule.num_tokens
        complete = source.schedule.complete()
        for group, layers in self._group_layers.items():
            if group not in source.landed_groups and (
                    complete or group in source.completed_groups
                    or all(source.full.get(layer, -1) >= total for layer in layers)):
                source.landed_groups.add(group)
                if all(group in s.landed_groups for s in self._sources.values()):
                    self._landed_groups.add(group)
                    self._landed_layers.update(n for n in layers if self._layer_groups[n] <= self._landed_groups)
                    self._wake()

    async def _complete(self) -> None:
        missing = self._landed.missing(self.plan)
        if missing:  # the schedule handed out less than the plan: never call that a success
            raise StreamedTransferError("the stream ended with planned bytes not moved",
                                        request_id=self.request_id)
        self._all_landed = True  # from here on the request succeeded, whatever else happens
        self._revoke_writes()
        seconds = time.perf_counter() - self._started
        nbytes = self._landed.bytes
        ndesc = self.plan.statistics.descriptor_count
        self._on_success(self.request_id)
        self._stats.transfer_done(nbytes, ndesc, seconds)
        self._landed_layers.update(self._layer_groups)
        self._unsubscribed = True  # a finished subscription ends on P by itself
        notified: list[int] = []
        try:
            await self._notify_done(seconds, notified)
        finally:  # even if the agent closes meanwhile: the bytes are in place, the result stands
            self._result = TransferResult(self.request_id, nbytes, ndesc, seconds, tuple(sorted(notified)))
            log.debug("stream %s (%s): %d bytes in %.6fs", self.request_id, self.mode, nbytes, seconds)
            self._wake()

    async def _notify_done(self, seconds: float, notified: list[int]) -> None:
        """Tell every notify rank the request is done (they free its blocks): :func:`notify_done`."""
        await notify_done(self._transport, self.plan, self.request_id, self._notify, seconds, self._stats, notified)

    # -- write grants (push) ----------------------------------------------------------------------
    @property
    def grant_id(self) -> str:
        """The request id this stream's write grants are recorded under on D's transport."""
        return f"{self.request_id} (stream {self.stream_id})"

    def _grant_writes(self, writers: Mapping[int, str], lease: float | None) -> None:
        """Grant each source rank writes into exactly the D bytes of its own rows; ``writers``
        names a rank's identity where it is not its agent name (its certificate under TLS)."""
        d = self.plan.descriptors
        for rank, source in self._sources.items():
            mine = d.take(np.flatnonzero(d.src_rank == rank))
            rows = attrs.evolve(mine, dst_region=self._dst_map[mine.dst_region])
            peer = writers.get(rank, source.handle.name)
            grant_writes(self._transport, self.grant_id, peer, rows, lease)
            self._granted.append(peer)

    def _revoke_writes(self) -> None:
        """Withdraw the write grants (idempotent): from now on D refuses the P ranks' writes."""
        granted, self._granted = self._granted, []
        for peer in dict.fromkeys(granted):
            revoke_request(self._transport, self.grant_id, peer)

    # -- ending ---------------------------------------------------------------------------------
    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _fail(self, message: str, cause: BaseException | None, *, rank: int | None = None,
              timed_out: bool = False) -> None:
        if self._error is not None or self._result is not None or self._all_landed:
            return
        landed = sorted(self._landed_layers)
        invalid = [layer for layer in self._layer_groups if layer not in self._landed_layers]
        error = StreamedTransferError(message, request_id=self.request_id, source_rank=rank,
                                      invalid_blocks=self.invalid_blocks(), invalid_layers=invalid,
                                      landed_layers=landed, timed_out=timed_out)
        error.__cause__ = cause
        self._error = error
        self._revoke_writes()
        self._stats.counts["timeouts" if timed_out else "failures"] += 1
        log.info("stream %s failed: %s", self.request_id, error)
        self._scope.cancel()
        self._wake()
        if not self._unsubscribed:
            self._unsubscribed = True
            self._spawn(self._unsubscribe)

    async def _unsubscribe(self) -> None:
        """Tell every source rank to stop (best effort: a dead one cannot hear it)."""
        message = encode_stream(StreamMessage("unsubscribe", self.request_id, self.stream_id))

        async def one(source: _Source) -> None:
            try:
                await self._transport.notify(source.handle, message)
            except Exception as exc:
                log.info("stream %s: could not unsubscribe from P rank %d: %s", self.request_id, source.rank, exc)

        with anyio.move_on_after(NOTIFY_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for source in self._sources.values():
                    tg.start_soon(one, source)


def _call(callback: Callable[[StreamedTransfer], None], stream: StreamedTransfer) -> None:
    try:
        callback(stream)
    except Exception:
        log.exception("stream %s: a done callback failed", stream.request_id)


class _SourceFailed(Exception):
    """One source rank's part of the stream failed (``message`` says how)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _src_map(plan: Any, rank: int, peer: PeerHandle) -> npt.NDArray[np.int64]:
    """Plan source-region index -> the peer's registration order (-1: a region it lacks)."""
    index = {n: i for i, n in enumerate(peer.region_names)}
    d = plan.descriptors
    used = set(np.unique(d.src_region[d.src_rank == rank]).tolist())
    lacking = [plan.src_region_names[i] for i in sorted(used) if plan.src_region_names[i] not in index]
    if lacking:
        raise InvalidArgumentError(f"P rank {rank} ({peer.name!r}) has no registered region named {lacking}")
    return np.array([index.get(n, -1) for n in plan.src_region_names], dtype=np.int64)


def _index_map(names: tuple[str, ...], registered: tuple[str, ...], where: str) -> npt.NDArray[np.int64]:
    index = {n: i for i, n in enumerate(registered)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InvalidArgumentError(f"{where} has no registered region named {missing}")
    return np.array([index[n] for n in names], dtype=np.int64)

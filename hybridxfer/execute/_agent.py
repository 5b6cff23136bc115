"""The per-rank ``Agent``: owns registered memory and a transport, handshakes, runs plans.

Why one object per rank: it is the unit an engine starts and stops with a worker. It
keeps the registered arrays alive, publishes one metadata blob (identity + layout digests
+ transport address), refuses incompatible peers before connecting, and turns a
:class:`~hybridxfer.plan.TransferPlan` into an :class:`ExecutablePlan`. On the P side it
turns incoming ``done`` notifications into completed requests, exactly once each.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
import numpy as np

from hybridxfer.errors import (
    ClosedTransportError,
    ConnectError,
    IncompatibleLayoutsError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.execute._executable import ExecutablePlan
from hybridxfer.execute._info import (
    AgentInfo,
    ControlMessage,
    LayoutLike,
    Role,
    check_compatible,
    decode_control,
    encode_control,
)
from hybridxfer.execute._memory import to_region
from hybridxfer.execute._stats import AgentStatistics, StatisticsRecorder
from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan, compile_plan
from hybridxfer.transport import MemoryRegion, PeerHandle, ReadBatch, Transport
from hybridxfer.transport.registry import open_transport

__all__ = ["Agent", "CompletedRequest", "Peer"]

log = logging.getLogger("hybridxfer.execute")

# Completed request IDs remembered for duplicate detection and late waiters.
_REMEMBERED_REQUESTS = 65536


@attrs.frozen
class Peer:
    """A connected, compatible peer agent."""

    info: AgentInfo
    handle: PeerHandle = attrs.field(repr=False)

    @property
    def rank(self) -> int:
        return self.info.rank


@attrs.frozen
class CompletedRequest:
    """P side: a D agent finished reading ``request_id`` (its blocks may be freed)."""

    request_id: str
    peer_name: str
    dst_rank: int


class Agent:
    """One rank's endpoint. ``async with Agent(...) as agent:`` then register, connect, prepare.

    The agent runs a background task group (the notification pump), so like any anyio
    task group it must be closed by the task, and in the cancel scope, that entered it:
    use ``async with`` rather than calling ``aclose()`` from another task.
    """

    def __init__(
        self,
        name: str,
        *,
        transport: Transport | str = "tcp",
        transport_options: Mapping[str, object] | None = None,
        role: Role = "both",
        rank: int = 0,
        tp_size: int = 1,
        layout: LayoutLike | None = None,
        instance_parameters: bytes = b"",
    ) -> None:
        if isinstance(transport, str):
            transport = open_transport(transport, name=name, **dict(transport_options or {}))
        self.name = name
        self.transport = transport
        self.role: Role = role
        self.rank, self.tp_size = rank, tp_size
        self.layout = layout
        if not instance_parameters and isinstance(layout, RankLayout):
            instance_parameters = layout.to_json().encode()
        self._instance_parameters = instance_parameters
        self._peer_layouts: dict[str, RankLayout] = {}
        self._regions: dict[str, tuple[MemoryRegion, object]] = {}
        self._stats = StatisticsRecorder()
        self._succeeded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._done: collections.OrderedDict[tuple[str, str], CompletedRequest] = collections.OrderedDict()
        self._waiters: dict[str, anyio.Event] = {}
        self._completed_send: MemoryObjectSendStream[CompletedRequest] | None = None
        self._completed_receive: MemoryObjectReceiveStream[CompletedRequest] | None = None
        self._hellos: dict[str, AgentInfo] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Agent:
        if self._closed:
            raise ClosedTransportError(f"agent {self.name!r} cannot be re-entered")
        await self.transport.__aenter__()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._pump_notifications)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the notification pump and close the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tg, self._task_group = self._task_group, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._completed_send is not None and self._completed_receive is not None:
            self._completed_send.close()
            self._completed_receive.close()
        for event in self._waiters.values():
            event.set()
        await self.transport.aclose()

    def _check_open(self) -> None:
        if self._closed or self._task_group is None:
            raise ClosedTransportError(f"agent {self.name!r} is closed or not entered")

    # -- memory and identity ----------------------------------------------------------
    async def register(self, name: str, memory: object) -> MemoryRegion:
        """Register a numpy array, bytearray, torch tensor or ``(pointer, length)``.

        The agent keeps ``memory`` alive until it is closed. Register everything before
        publishing :meth:`metadata`.
        """
        self._check_open()
        if name in self._regions:
            raise ValueError(f"region {name!r} is already registered")
        region = to_region(name, memory)
        await self.transport.register([region])
        self._regions[name] = (region, memory)
        log.debug("agent %s registered %s (%d bytes, %s)", self.name, name, region.length, region.kind)
        return region

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self._regions)

    def info(self) -> AgentInfo:
        self._check_open()
        layout = self.layout
        return AgentInfo(
            name=self.name, role=self.role, rank=self.rank, tp_size=self.tp_size,
            layout_digest=layout.digest if layout is not None else "",
            model_digest=layout.model_digest if layout is not None else "",
            transport=self.transport.name, transport_metadata=self.transport.local_metadata(),
            instance_parameters=self._instance_parameters,
        )

    def metadata(self) -> bytes:
        """The blob peers pass to :meth:`connect` (identity, digests, transport address)."""
        return self.info().to_bytes()

    async def connect(self, metadata: bytes) -> Peer:
        """Handshake with a peer: check compatibility *first*, then connect and say hello.

        Raises :class:`IncompatibleLayoutsError` (other model) or :class:`ConnectError`
        before any connection is opened. Cancellation may leave an unused connection that
        is closed with the transport.
        """
        self._check_open()
        remote = AgentInfo.from_bytes(metadata)
        local = self.info()
        try:
            check_compatible(local, remote)
        except (IncompatibleLayoutsError, ConnectError) as exc:
            log.info("agent %s refused peer %s: %s", self.name, remote.name, exc)
            raise
        handle = await self.transport.connect(remote.transport_metadata)
        try:
            await self.transport.notify(handle, encode_control(ControlMessage("hello", info=local)))
        except TransferError as exc:
            raise ConnectError(f"hello to {remote.name!r} failed: {exc}") from exc
        log.info("agent %s connected to %s (rank %d/%d, layout %s)", self.name, remote.name,
                 remote.rank, remote.tp_size, remote.layout_digest or "-")
        return Peer(remote, handle)

    # -- D side ------------------------------------------------------------------------
    def source_layouts(self, peers: Mapping[int, Peer] | Sequence[Peer]) -> tuple[RankLayout, ...]:
        """The P ranks' resolved layouts, from their hellos (parsed once per digest)."""
        by_rank = dict(peers) if isinstance(peers, Mapping) else {p.rank: p for p in peers}
        if not by_rank:
            raise ConnectError("no peers given")
        tp = next(iter(by_rank.values())).info.tp_size
        missing = [r for r in range(tp) if r not in by_rank]
        if missing:
            raise ConnectError(f"planning needs every P rank of the TP-{tp} engine; missing ranks {missing}")
        out = []
        for r in range(tp):
            info = by_rank[r].info
            key = info.layout_digest
            if key not in self._peer_layouts:
                if not info.instance_parameters:
                    raise IncompatibleLayoutsError(f"peer {info.name!r} published no layout to plan against")
                self._peer_layouts[key] = RankLayout.from_json(info.instance_parameters.decode())
            out.append(self._peer_layouts[key])
        return tuple(out)

    def plan(
        self,
        peers: Mapping[int, Peer] | Sequence[Peer],
        *,
        request_id: str,
        src_blocks: Mapping[str, Sequence[int]],
        dst_blocks: Mapping[str, Sequence[int]],
        num_tokens: int | None = None,
        coalesce: bool = True,
    ) -> ExecutablePlan:
        """Plan one request against connected P ranks; ``await result.execute()`` moves it.

        Compiles (cached per layout pair) and binds the request's block IDs with
        :func:`hybridxfer.plan.compile_plan`; every check (compatibility, block IDs,
        overlapping writes) happens here, before any byte moves.
        """
        self._check_open()
        if not isinstance(self.layout, RankLayout):
            raise IncompatibleLayoutsError(f"agent {self.name!r} has no RankLayout to plan into")
        template = compile_plan(self.source_layouts(peers), self.layout, coalesce=coalesce)
        bound = template.bind(src_blocks, dst_blocks, num_tokens=num_tokens)
        log.info("agent %s planned %s: %d bytes in %d descriptors from P ranks %s", self.name, request_id,
                 bound.statistics.bytes, bound.statistics.descriptor_count, bound.source_ranks)
        return self.prepare(bound, peers, request_id)

    def prepare(self, plan: TransferPlan, peers: Mapping[int, Peer] | Sequence[Peer],
                request_id: str) -> ExecutablePlan:
        """Bind ``plan`` to connected peers (keyed by source rank) for one request.

        Raises :class:`ConnectError` if a source or notify rank has no peer,
        :class:`IncompatibleLayoutsError` if a region name is unknown on either side, and
        :class:`TransferError` if this request already succeeded on this agent.
        """
        self._check_open()
        if request_id in self._succeeded:
            raise TransferError("request already completed; P may have freed its blocks",
                                request_id=request_id, invalid_blocks=dict(plan.dst_blocks))
        by_rank = dict(peers) if isinstance(peers, Mapping) else {p.rank: p for p in peers}
        local_index = {n: i for i, n in enumerate(self._regions)}
        dst_map = self._index_map(plan.dst_region_names, local_index, "local")
        limit = self.transport.capabilities.max_descriptors_per_read
        batches: dict[int, tuple[PeerHandle, tuple[ReadBatch, ...]]] = {}
        for reads in plan.reads:
            peer = by_rank.get(reads.src_rank)
            if peer is None:
                raise ConnectError(f"no connected peer for source rank {reads.src_rank}")
            remote_index = {n: i for i, n in enumerate(peer.handle.region_names)}
            src_map = self._index_map(plan.src_region_names, remote_index, f"peer {peer.info.name!r}")
            batch = ReadBatch(src_map[reads.src_region], reads.src_offset, dst_map[reads.dst_region],
                              reads.dst_offset, reads.length)
            step = limit or max(1, len(batch))
            parts = tuple(batch.slice(s, s + step) for s in range(0, len(batch), step)) or (batch,)
            batches[reads.src_rank] = (peer.handle, parts)
        notify: dict[int, PeerHandle] = {}
        for rank in plan.notify_ranks:
            peer = by_rank.get(rank)
            if peer is None:
                raise ConnectError(f"no connected peer for notify rank {rank}")
            notify[rank] = peer.handle
        return ExecutablePlan(plan=plan, request_id=request_id, transport=self.transport,
                              batches=batches, notify_peers=notify, stats=self._stats,
                              on_success=self._remember_success)

    @staticmethod
    def _index_map(names: Sequence[str], index: Mapping[str, int], where: str) -> np.ndarray:
        missing = [n for n in names if n not in index]
        if missing:
            raise IncompatibleLayoutsError(f"{where} has no registered region named {missing}")
        return np.array([index[n] for n in names], dtype=np.int64)

    def _remember_success(self, request_id: str) -> None:
        self._succeeded[request_id] = None
        while len(self._succeeded) > _REMEMBERED_REQUESTS:
            self._succeeded.popitem(last=False)

    # -- P side ------------------------------------------------------------------------
    async def _pump_notifications(self) -> None:
        while True:
            try:
                note = await self.transport.next_notification()
            except ClosedTransportError:
                return
            message = decode_control(note.message)
            if message is None:
                log.debug("agent %s: ignoring foreign notification from %s", self.name, note.peer_name)
            elif message.kind == "hello" and message.info is not None:
                self._on_hello(note.peer_name, message.info)
            elif message.kind == "done":
                self._on_done(CompletedRequest(message.request_id, note.peer_name, message.dst_rank))

    def _on_hello(self, peer_name: str, info: AgentInfo) -> None:
        try:
            check_compatible(self.info(), info)
        except (IncompatibleLayoutsError, ConnectError) as exc:
            log.warning("agent %s: incompatible peer %s said hello: %s", self.name, peer_name, exc)
            return
        self._hellos[peer_name] = info
        log.info("agent %s: hello from %s (rank %d/%d)", self.name, info.name, info.rank, info.tp_size)

    def _on_done(self, done: CompletedRequest) -> None:
        key = (done.request_id, done.peer_name)
        if key in self._done:
            log.info("agent %s: duplicate completion of %s from %s ignored", self.name, *key)
            return
        self._done[key] = done
        while len(self._done) > _REMEMBERED_REQUESTS:
            self._done.popitem(last=False)
        self._stats.counts["requests_completed"] += 1
        log.debug("agent %s: request %s completed by %s", self.name, *key)
        if self._completed_send is not None:
            try:
                self._completed_send.send_nowait(done)
            except anyio.WouldBlock:
                log.warning("agent %s: completed_requests() consumer is behind; dropped %s", self.name, key)
        event = self._waiters.pop(done.request_id, None)
        if event is not None:
            event.set()

    def completed_requests(self) -> AsyncIterator[CompletedRequest]:
        """``async for done in agent.completed_requests()``: each completion exactly once,
        from the first call on (earlier ones are visible through :meth:`wait_request_done`)."""
        self._check_open()
        if self._completed_receive is None:
            self._completed_send, self._completed_receive = anyio.create_memory_object_stream[
                CompletedRequest](_REMEMBERED_REQUESTS)
        return self._completed_receive

    async def wait_request_done(self, request_id: str, *, timeout: float | None = None) -> CompletedRequest:
        """Wait until some D agent reported ``request_id`` done.

        Raises :class:`TransferTimeout` after ``timeout`` seconds (e.g. a lost
        notification). Cancellation leaves nothing behind.
        """
        self._check_open()
        while True:
            for (rid, _), done in self._done.items():
                if rid == request_id:
                    return done
            event = self._waiters.setdefault(request_id, anyio.Event())
            with anyio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
                await event.wait()
            if scope.cancelled_caught:
                if self._waiters.get(request_id) is event:
                    del self._waiters[request_id]
                raise TransferTimeout(f"no completion notification within {timeout}s", request_id=request_id)
            self._check_open()

    def statistics(self) -> AgentStatistics:
        """A frozen snapshot of this agent's counters."""
        return self._stats.snapshot()

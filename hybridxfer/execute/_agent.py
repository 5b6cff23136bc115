"""The per-rank ``Agent``: owns registered memory and a transport, handshakes, runs plans.

Why one object per rank: it is the unit an engine starts and stops with a worker. It
keeps the registered arrays alive, publishes one metadata blob (identity + layout digests
+ transport address), refuses incompatible peers before connecting, and turns a
:class:`~hybridxfer.plan.TransferPlan` into an :class:`ExecutablePlan`. On the P side it
turns incoming ``done`` notifications into completed requests, exactly once each.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence

import anyio
import anyio.abc
import attrs

from hybridxfer.errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConnectError,
    IncompatibleLayoutsError,
    LayoutError,
    NotStartedError,
    PeerRestartedError,
    ProtocolError,
    RegistrationError,
    TransferError,
)
from hybridxfer.execute._completions import REMEMBERED, Completions
from hybridxfer.execute._executable import ExecutablePlan
from hybridxfer.execute._grants import RequestGrant, grant_request, revoke_request
from hybridxfer.execute._landed import LandedBytes, LandedTransport
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
from hybridxfer.execute._peer import Peer
from hybridxfer.execute._progress import CountingTransport, ProgressCallback, TransferProgress
from hybridxfer.execute._stats import AgentStatistics, StatisticsRecorder
from hybridxfer.execute._agent_streams import StreamingMixin
from hybridxfer.execute._stream import StreamedTransfer
from hybridxfer.execute._stream_source import StreamSource
from hybridxfer.execute._stream_wire import decode_stream
from hybridxfer.layout import RankLayout, rank_layout_from_dict
from hybridxfer.plan import TransferPlan, compile_plan
from hybridxfer.transport import Access, MemoryRegion, Transport
from hybridxfer.transport.registry import open_transport

__all__ = ["Agent", "CompletedRequest", "Peer"]

log = logging.getLogger("hybridxfer.execute")


@attrs.frozen
class CompletedRequest:
    """P side: a D agent finished reading ``request_id`` (its blocks may be freed)."""

    request_id: str
    peer_name: str
    dst_rank: int
    #: Bytes that D rank reported reading from this agent for the request.
    bytes: int = 0
    #: Seconds that D rank's transfer of the request took (0.0 if it did not say).
    seconds: float = 0.0


class Agent(StreamingMixin):
    """One rank's endpoint. ``async with Agent(...) as agent:`` then register, connect, prepare.

    The agent owns its transport (entered and closed with it) and runs a background task
    group (the notification pump), so like any anyio task group it must be closed by the
    task, and in the cancel scope, that entered it: use ``async with`` rather than calling
    ``aclose()`` from another task. Used before it is entered it raises
    :class:`~hybridxfer.errors.NotStartedError`; after it is closed,
    :class:`~hybridxfer.errors.ClosedTransportError`.
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
        incarnation: str | None = None,
    ) -> None:
        if isinstance(transport, str):
            transport = open_transport(transport, name=name, **dict(transport_options or {}))
        self.name = name
        #: Random id of this agent's lifetime, published in its metadata. A transport that
        #: has one of its own (tcp checks it on every reconnect) lends it, so the error a
        #: reader sees names the same id the handshake carried.
        self.incarnation = incarnation or _transport_incarnation(transport) or secrets.token_hex(8)
        self.transport = transport
        self.role: Role = role
        self.rank, self.tp_size = rank, tp_size
        self.layout = layout
        self._instance_parameters = instance_parameters
        # what peers plan against: published once, as the handshake's ``layout`` field
        self._layout_document = layout.instance_dict() if isinstance(layout, RankLayout) else None
        self._peer_layouts: dict[str, RankLayout] = {}
        self._regions: dict[str, tuple[MemoryRegion, object]] = {}
        self._stats = StatisticsRecorder()
        self._succeeded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._completions: Completions[CompletedRequest] = Completions(f"agent {name!r}")
        self._hellos: dict[str, AgentInfo] = {}
        self._resources: contextlib.AsyncExitStack | None = None
        self._closed = False
        self._tasks: anyio.abc.TaskGroup | None = None
        self._streams: dict[str, StreamedTransfer] = {}
        self._stream_source = StreamSource(name=name, transport=transport, layout=layout,
                                           local_regions=lambda: self.region_names, hellos=self._hellos,
                                           spawn=self._spawn)

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Agent:
        if self._closed:
            raise ClosedTransportError(f"agent {self.name!r} cannot be re-entered")
        if self._resources is not None:
            raise RuntimeError(f"agent {self.name!r} is already entered")
        async with contextlib.AsyncExitStack() as stack:
            # Closed in reverse: stop the pump, wake waiters and end the stream, close the transport.
            await stack.enter_async_context(self.transport)
            stack.callback(self._completions.close)
            pump = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(pump.cancel_scope.cancel)
            pump.start_soon(self._pump_notifications)
            self._tasks = pump  # streams run here too, so closing the agent ends them
            self._resources = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the notification pump and close the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.aclose()
        else:  # never entered: the transport is still ours to close
            self._completions.close()
            await self.transport.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedTransportError(f"agent {self.name!r} is closed")
        if self._resources is None:
            raise NotStartedError(f"agent {self.name!r} is not started: use `async with Agent(...)`")

    # -- memory and identity ----------------------------------------------------------
    async def register(self, name: str, memory: object) -> MemoryRegion:
        """Register a numpy array, bytearray, torch tensor or ``(pointer, length)``.

        The agent keeps ``memory`` alive until it is closed. Register everything before
        publishing :meth:`metadata`. Raises :class:`~hybridxfer.errors.RegistrationError`
        (registering nothing) for a name registered already or memory that is not one
        contiguous writable range, and ``TypeError`` for an object that is not memory.
        """
        self._check_open()
        if name in self._regions:
            raise RegistrationError(f"region {name!r} is already registered on agent {self.name!r}")
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
            instance_parameters=self._instance_parameters, layout=self._layout_document,
            incarnation=self.incarnation,
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
        except (TransferError, BrokenTransportError, ProtocolError) as exc:
            raise ConnectError(f"hello to {remote.name!r} failed: {exc}") from exc
        log.info("agent %s connected to %s (rank %d/%d, layout %s, incarnation %s)", self.name, remote.name,
                 remote.rank, remote.tp_size, remote.layout_digest or "-", remote.incarnation or "-")
        return Peer(remote, handle)

    def check_incarnation(self, peer: Peer, metadata: bytes) -> AgentInfo:
        """Raise :class:`~hybridxfer.errors.PeerRestartedError` if ``metadata`` (fresh from
        the peer's address) is another incarnation than the one ``peer`` handshook with.

        Returns the fresh info. Opens nothing: the caller decides whether to reconnect.
        """
        fresh = AgentInfo.from_bytes(metadata)
        if fresh.incarnation != peer.incarnation:
            raise PeerRestartedError(f"P rank {peer.rank} restarted", peer=peer.info.name,
                                     old_incarnation=peer.incarnation, new_incarnation=fresh.incarnation)
        return fresh

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
        # a pipelined P (its layout says pp > 1): every (stage, TP rank), keyed by global rank
        ranks = tp * self._source_layout(by_rank[0].info).pp
        missing = [r for r in range(ranks) if r not in by_rank]
        if missing:
            raise ConnectError(f"planning needs every P rank of the pipelined engine (global rank = stage * "
                               f"{tp} + TP rank); missing ranks {missing}")
        return tuple(self._source_layout(by_rank[r].info) for r in range(ranks))

    def _source_layout(self, info: AgentInfo) -> RankLayout:
        """A P rank's resolved layout, from its hello (parsed once per digest)."""
        key = info.layout_digest
        if key not in self._peer_layouts:
            if info.layout is None:
                raise IncompatibleLayoutsError(f"peer {info.name!r} published no layout to plan against")
            try:
                self._peer_layouts[key] = rank_layout_from_dict(info.layout,
                                                                source=f"<layout of peer {info.name!r}>")
            except LayoutError as exc:
                raise IncompatibleLayoutsError(
                    f"peer {info.name!r} published a layout we cannot read: {exc}") from exc
        return self._peer_layouts[key]

    def plan(
        self,
        peers: Mapping[int, Peer] | Sequence[Peer],
        *,
        request_id: str,
        src_blocks: Mapping[str, Sequence[int]],
        dst_blocks: Mapping[str, Sequence[int]],
        num_tokens: int | None = None,
        coalesce: bool = True,
        on_progress: ProgressCallback | None = None,
        progress_step_bytes: int | None = None,
        landed: LandedBytes | None = None,
        dst_cached_tokens: int | Mapping[str, int] | None = None,
    ) -> ExecutablePlan:
        """Plan one request against connected P ranks; ``await result.execute()`` moves it.

        Compiles (cached per layout pair) and binds the request's block IDs with
        :func:`hybridxfer.plan.compile_plan`; every check (compatibility, block IDs,
        overlapping writes) happens here, before any byte moves. ``on_progress``,
        ``progress_step_bytes`` and ``landed``: see :meth:`prepare`. ``dst_cached_tokens``:
        the leading tokens D's prefix cache already holds (see :func:`hybridxfer.plan.bind`).
        """
        self._check_open()
        if not isinstance(self.layout, RankLayout):
            raise IncompatibleLayoutsError(f"agent {self.name!r} has no RankLayout to plan into")
        template = compile_plan(self.source_layouts(peers), self.layout, coalesce=coalesce)
        bound = template.bind(src_blocks, dst_blocks, num_tokens=num_tokens, dst_cached_tokens=dst_cached_tokens)
        log.info("agent %s planned %s: %d bytes in %d descriptors from P ranks %s", self.name, request_id,
                 bound.statistics.bytes, bound.statistics.descriptor_count, bound.source_ranks)
        return self.prepare(bound, peers, request_id, on_progress=on_progress,
                            progress_step_bytes=progress_step_bytes, landed=landed)

    def prepare(self, plan: TransferPlan, peers: Mapping[int, Peer] | Sequence[Peer],
                request_id: str, *, on_progress: ProgressCallback | None = None,
                progress_step_bytes: int | None = None, landed: LandedBytes | None = None) -> ExecutablePlan:
        """Bind ``plan`` to connected peers (keyed by source rank) for one request.

        ``on_progress`` is called with a :class:`TransferProgress` each time bytes of this
        request land (``bytes_done`` grows to ``bytes_total``); with
        ``progress_step_bytes`` large reads are split so that it is called about every
        that many bytes (default: once per read). ``landed`` (a :class:`LandedBytes` over
        :attr:`region_names`) records the destination ranges of every read that returned,
        in pieces of ``progress_step_bytes`` when given: what a failed request can still
        trust.

        Raises :class:`ConnectError` if a source or notify rank has no peer,
        :class:`IncompatibleLayoutsError` if a region name is unknown on either side, and
        :class:`TransferError` if this request already succeeded on this agent.
        """
        self._check_open()
        if request_id in self._succeeded:
            raise TransferError("request already completed; P may have freed its blocks",
                                request_id=request_id, invalid_blocks=dict(plan.dst_blocks))
        transport = self._progress_transport(request_id, plan.statistics.bytes, on_progress,
                                             progress_step_bytes, landed)
        by_rank = dict(peers) if isinstance(peers, Mapping) else {p.rank: p for p in peers}
        return ExecutablePlan(plan=plan, request_id=request_id, transport=transport,
                              peers={rank: peer.handle for rank, peer in by_rank.items()},
                              local_regions=tuple(self._regions), stats=self._stats,
                              on_success=self._remember_success)

    def _progress_transport(self, request_id: str, total: int, on_progress: ProgressCallback | None,
                            step_bytes: int | None, landed: LandedBytes | None = None) -> Transport:
        """The transport one request reads through: ours, or ours recording and/or counting."""
        base: Transport = self.transport
        if on_progress is not None:
            done = 0

            def landed_now(nbytes: int) -> None:
                nonlocal done
                done += nbytes
                on_progress(TransferProgress(request_id, done, total))

            # with a record, the recorder outside cuts the pieces and this one only counts them
            base = CountingTransport(base, landed_now, step_bytes=None if landed is not None else step_bytes)
        if landed is not None:
            base = LandedTransport(base, landed, step_bytes=step_bytes)
        return base

    def _remember_success(self, request_id: str) -> None:
        self._succeeded[request_id] = None
        while len(self._succeeded) > REMEMBERED:
            self._succeeded.popitem(last=False)

    # -- P side ------------------------------------------------------------------------
    def grant(self, request_id: str, peer: str, blocks: Mapping[str, Sequence[int]], *,
              lease: float | None = None, access: Access = "read") -> RequestGrant:
        """Let ``peer`` read ``request_id``'s bytes on this rank: every layer's pieces of the
        blocks in ``blocks`` (P's block table, KV group -> block IDs, as given to D), for
        ``lease`` seconds (``None``: until :meth:`revoke`).

        ``peer`` is the identity the transport authenticates: the reader's certificate
        subject under TLS, else its agent name. Enforced where the transport requires
        grants (``tcp`` with ``require_grants=True``); ``.enforced`` says so. Raises
        :class:`~hybridxfer.errors.BlockIdError` for IDs outside the layout and
        :class:`~hybridxfer.errors.RegistrationError` when the request lies in memory not
        registered here. Synchronous: call it before handing the request to ``peer``.
        ``access="write"``: let ``peer`` *write* those blocks instead (push mode, on the
        decode side: ``blocks`` is then D's block table and ``peer`` the prefill writer).
        """
        self._check_open()
        return grant_request(self.transport, self.layout, self.region_names, request_id, peer, blocks, lease,
                             access)

    def revoke(self, request_id: str, peer: str | None = None) -> int:
        """Withdraw ``request_id``'s grants (of ``peer``, or every peer's); returns how many
        were live. Reads of it asked for afterwards are refused; one already being served finishes."""
        return revoke_request(self.transport, request_id, peer)

    async def _pump_notifications(self) -> None:
        while True:
            try:
                note = await self.transport.next_notification()
            except ClosedTransportError:
                return
            message = decode_control(note.message)
            stream = decode_stream(note.message) if message is None else None
            if stream is not None and stream.kind in ("subscribe", "unsubscribe"):
                self._stream_source.on_message(note.peer_name, stream)
            elif stream is not None:
                if (target := self._streams.get(stream.stream_id)) is not None:
                    target.deliver(note.peer_name, stream)
            elif message is None:
                log.debug("agent %s: ignoring foreign notification from %s", self.name, note.peer_name)
            elif message.kind == "hello" and message.info is not None:
                self._on_hello(note.peer_name, message.info)
            elif message.kind == "done":
                self._on_done(CompletedRequest(message.request_id, note.peer_name, message.dst_rank,
                                               message.bytes, message.seconds))

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
        if not self._completions.add(done.request_id, done, key=key):
            log.info("agent %s: duplicate completion of %s from %s ignored", self.name, *key)
            return
        self._stats.counts["requests_completed"] += 1
        self._stats.counts["bytes_served"] += done.bytes
        log.debug("agent %s: request %s completed by %s", self.name, *key)

    def completed_requests(self) -> AsyncIterator[CompletedRequest]:
        """``async for done in agent.completed_requests()``: each completion exactly once,
        from the first call on (earlier ones are visible through :meth:`wait_request_done`)."""
        self._check_open()
        return self._completions.stream()

    async def wait_request_done(self, request_id: str, *, timeout: float | None = None) -> CompletedRequest:
        """Wait until some D agent reported ``request_id`` done.

        Raises :class:`TransferTimeout` after ``timeout`` seconds (e.g. a lost
        notification). Cancellation leaves nothing behind.
        """
        self._check_open()
        return await self._completions.wait(request_id, timeout=timeout,
                                            message=f"no completion notification within {timeout}s")

    def statistics(self) -> AgentStatistics:
        """A frozen snapshot of this agent's counters."""
        return self._stats.snapshot()


def _transport_incarnation(transport: Transport) -> str:
    """The transport's own incarnation when it has one (an optional attribute, not part of
    the transport contract), looking through wrappers (``inner``), else ``""``."""
    current: object = transport
    for _ in range(16):  # wrappers nest a few deep at most; never loop on a cycle
        value = getattr(current, "incarnation", None)
        if isinstance(value, str):
            return value
        current = getattr(current, "inner", None)
        if current is None:
            break
    return ""

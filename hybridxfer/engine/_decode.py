"""D side: pull a request's blocks from a prefill engine; report every failure per request.

Why a connector over the agent: an engine thinks in requests and block IDs, not in P
ranks and plans. :meth:`DecodeConnector.pull` plans against the right P engine's ranks,
executes, and either returns what moved or raises :class:`RequestFailed` — after
recording the failure for :meth:`DecodeConnector.failed_requests`, so the scheduler can
recompute the request even when the task that awaited the pull has gone.

Two choices are the engine's, per request. ``on_failure="recompute"`` adds to the failure
how many leading tokens did arrive intact (``hybridxfer.engine._intact`` says how that is
decided, conservatively). ``retry_on_restart=True`` handles a P that came back on the same
address as another process: when a read fails, the connector asks the engine's metadata
source (given to :meth:`DecodeConnector.connect`) for P's current metadata; if a rank's
incarnation changed, it handshakes with the new one and pulls once more — within the same
deadline. Without it the failure says ``restarted`` and names both incarnations.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType

import anyio
import attrs

from hybridxfer.engine._caches import check_caches
from hybridxfer.engine._failures import FailedRequest, FailurePolicy, FailureReason, RequestFailed
from hybridxfer.engine._intact import intact_tokens
from hybridxfer.engine._pull_result import PullResult
from hybridxfer.engine._stream import STREAM_THRESHOLD_TOKENS, StreamedPull, StreamMode, start_streamed_pull
from hybridxfer.errors import (
    InvalidArgumentError,
    BlockIdError,
    ConnectError,
    HybridXferError,
    IncompatibleLayoutsError,
    PeerRestartedError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.execute import (
    Agent,
    AgentInfo,
    AgentStatistics,
    ExecutablePlan,
    LandedBytes,
    Peer,
    ProgressCallback,
    StreamedTransfer,
    TransferResult,
)
from hybridxfer.layout import RankLayout
from hybridxfer.transport import Transport

__all__ = ["DecodeConnector", "DecodeStatistics", "MetadataSource", "PullResult"]

log = logging.getLogger("hybridxfer.engine")

#: Succeeded request ids remembered, so pulling one again is refused, not recorded as failed.
_REMEMBERED = 65536

#: Block table: KV group name -> logical block IDs of the request, in token order.
BlockTable = Mapping[str, Sequence[int]]

#: Returns a prefill engine's *current* metadata blobs (one per P rank), e.g. fetched again
#: from its metadata server or a cluster directory; how the connector learns of a restart.
MetadataSource = Callable[[], Awaitable[Sequence[bytes]]]


@attrs.frozen
class DecodeStatistics:
    """A snapshot: the agent's counters plus the connector's per-request counts."""

    agent: AgentStatistics
    requests_received: int
    requests_failed: int
    requests_in_flight: int


class DecodeConnector:
    """One decode rank. ``async with DecodeConnector(layout, name=...) as d:``.

    Then :meth:`register_caches`, :meth:`connect` to each prefill engine (every rank's
    metadata), and :meth:`pull` requests — concurrently if you like.
    """

    def __init__(
        self,
        layout: RankLayout,
        *,
        name: str,
        transport: Transport | str = "tcp",
        transport_options: Mapping[str, object] | None = None,
        default_timeout: float | None = 60.0,
        coalesce: bool = True,
        stream_threshold_tokens: int = STREAM_THRESHOLD_TOKENS,
    ) -> None:
        if isinstance(stream_threshold_tokens, bool) or not isinstance(stream_threshold_tokens, int) \
                or stream_threshold_tokens < 0:
            raise InvalidArgumentError(f"stream_threshold_tokens must be an integer >= 0, "
                                       f"got {stream_threshold_tokens!r}")
        self.layout = layout
        self.name = name
        self.default_timeout = default_timeout
        #: ``pull_streamed(mode="auto")`` streams from this many prompt tokens per P TP rank.
        self.stream_threshold_tokens = stream_threshold_tokens
        self._coalesce = coalesce
        self._agent = Agent(name, transport=transport, transport_options=transport_options, role="decode",
                            rank=layout.rank, tp_size=layout.tp, layout=layout)
        self._engines: dict[str, dict[int, Peer]] = {}
        self._sources: dict[str, MetadataSource] = {}
        self._failed: collections.OrderedDict[str, FailedRequest] = collections.OrderedDict()
        self._succeeded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._in_flight: set[str] = set()
        self._received = 0
        self._failed_total = 0
        self._registered = False
        self._resources: contextlib.AsyncExitStack | None = None

    @property
    def agent(self) -> Agent:
        return self._agent

    async def __aenter__(self) -> DecodeConnector:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._agent)
            self._resources = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport. Idempotent; pulls in flight fail."""
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.aclose()
        else:
            await self._agent.aclose()

    async def register_caches(self, caches: Mapping[str, object]) -> None:
        """Register one cache tensor per layout region; see ``PrefillConnector.register_caches``."""
        check_caches(self.layout, caches)
        for name in self.layout.region_names:
            await self._agent.register(name, caches[name])
        self._registered = True

    async def connect(self, engine: str, metadata: Sequence[bytes], *,
                      refresh: MetadataSource | None = None) -> tuple[int, ...]:
        """Handshake with every rank of prefill engine ``engine`` (one blob per P rank).

        Raises :class:`~hybridxfer.errors.IncompatibleLayoutsError` (another model) or
        :class:`~hybridxfer.errors.ConnectError` (unreachable, or a P rank missing) before
        any byte moves. Returns the P ranks connected. Connecting again replaces the
        engine's peers (e.g. after it restarted). ``refresh`` fetches the engine's current
        metadata: with it a failed pull can tell a restarted P (``restarted``) and
        ``pull(retry_on_restart=True)`` can reconnect; it is kept until the next connect.
        """
        if refresh is not None:
            self._sources[engine] = refresh
        elif engine in self._sources:
            del self._sources[engine]
        await self._handshake(engine, metadata)
        return tuple(sorted(self._engines[engine]))

    async def _handshake(self, engine: str, metadata: Sequence[bytes]) -> None:
        if not self._registered:
            raise ConnectError(f"{self.name!r}: register_caches() before connecting")
        peers: dict[int, Peer] = {}
        for blob in metadata:
            peer = await self._agent.connect(blob)
            if peer.rank in peers:
                raise ConnectError(f"engine {engine!r}: two metadata blobs for P rank {peer.rank}")
            peers[peer.rank] = peer
        self._agent.source_layouts(peers)  # every rank present, layouts parse: fail now, not per pull
        self._engines[engine] = peers

    def engines(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def peers(self, engine: str) -> Mapping[int, Peer]:
        """The connected P ranks of ``engine`` by rank (their handshake info: layout,
        incarnation). Raises ``KeyError`` for an engine never connected."""
        return dict(self._engines[engine])

    async def pull(
        self,
        request_id: str,
        *,
        engine: str,
        src_blocks: BlockTable,
        dst_blocks: BlockTable,
        num_tokens: int | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        progress_step_bytes: int | None = None,
        on_failure: FailurePolicy = "fail",
        retry_on_restart: bool = False,
        dst_cached_tokens: int | Mapping[str, int] | None = None,
    ) -> PullResult:
        """Move one request's state from ``engine`` into ``dst_blocks``.

        ``src_blocks``: P's logical block IDs per P KV group (from P, through the engine's
        proxy); ``dst_blocks``: the blocks D allocated, per D KV group. ``timeout``
        (default :attr:`default_timeout`) bounds everything, a retry included.

        On success the P ranks are told, so they free their blocks. On any failure —
        planning refused, a read failed, the deadline passed, a P rank restarted — raises
        :class:`RequestFailed` and records it for :meth:`failed_requests`; P is not told
        and keeps its blocks until its own lease runs out. On cancellation the
        destination blocks are undefined, the request is recorded as failed with reason
        ``cancelled``, and the cancellation propagates.

        ``on_failure``: ``fail`` reports the blocks invalid; ``recompute`` also reports
        in ``FailedRequest.intact_tokens`` how many leading tokens arrived intact (reads
        are then recorded in pieces of ``progress_step_bytes`` when given, so a failure
        part-way keeps what came before it). ``retry_on_restart``: when a read failed
        because a P rank restarted (known through the ``refresh`` source given to
        :meth:`connect`), handshake with the new incarnation and pull once more.

        ``on_progress`` receives a :class:`~hybridxfer.execute.TransferProgress` each time
        bytes land (about every ``progress_step_bytes`` bytes when given).

        ``dst_cached_tokens``: leading tokens D's prefix cache already holds, one count or
        one per D KV group; those whole blocks are neither moved nor written (see
        :func:`hybridxfer.plan.bind`).

        Pulling a request that already succeeded raises
        :class:`~hybridxfer.errors.TransferError` and records nothing: its blocks hold
        what the first pull moved, so it is not a failure to recompute.
        """
        if request_id in self._succeeded:
            raise TransferError(f"request {request_id!r} was already pulled; its blocks are valid "
                                "(P may have freed its own)", request_id=request_id)
        if on_failure not in ("fail", "recompute"):
            raise InvalidArgumentError(f"on_failure must be 'fail' or 'recompute', not {on_failure!r}")
        invalid = {g: tuple(int(b) for b in ids) for g, ids in dst_blocks.items()}
        if request_id in self._in_flight:
            raise self._fail(FailedRequest(request_id, engine, "plan", "request is already being pulled", invalid))
        budget = self.default_timeout if timeout is None else timeout
        ends = anyio.current_time() + (math.inf if budget is None else budget)
        self._in_flight.add(request_id)
        try:
            attempt = _Attempt(self, request_id, engine, src_blocks, dst_blocks, num_tokens, on_progress,
                               progress_step_bytes, on_failure, invalid)
            attempt.dst_cached_tokens = dst_cached_tokens
            try:
                executable, result = await attempt.run(ends)
            except RequestFailed as failed:
                if not retry_on_restart or failed.failure.reason != "restarted" or not attempt.fresh:
                    raise  # nothing to retry with: no metadata source, or it shows no new incarnation
                log.info("%s: request %s: %s; reconnecting and retrying once", self.name, request_id,
                         failed.failure.message)
                self._failed.pop(request_id, None)  # superseded by the retry's outcome
                self._failed_total -= 1
                await attempt.reconnect(ends, failed)
                executable, result = await attempt.run(ends)
        finally:
            self._in_flight.discard(request_id)
        self._received += 1
        self._failed.pop(request_id, None)  # a successful retry supersedes an older failure
        self._succeeded[request_id] = None
        while len(self._succeeded) > _REMEMBERED:
            self._succeeded.popitem(last=False)
        return PullResult(request_id, engine, result.bytes, result.descriptors, result.seconds,
                          executable.plan.source_ranks, result.notified_ranks, executable.plan)

    def pull_streamed(self, request_id: str, *, engine: str, src_blocks: BlockTable, dst_blocks: BlockTable,
                      num_tokens: int | None = None, timeout: float | None = None, mode: StreamMode = "auto",
                      on_failure: FailurePolicy = "fail", group_layers: int = 1,
                      dst_cached_tokens: int | Mapping[str, int] | None = None,
                      writers: Mapping[int, str] | None = None) -> StreamedPull:
        """Start moving one request layer by layer while P computes it; returns at once.

        ``mode``: ``pull`` (this rank reads each layer group P reports ready), ``push``
        (P writes them; the transport must write), or ``auto`` (default): ``pull`` when the
        prompt holds at least :attr:`stream_threshold_tokens` tokens per P TP rank, else
        *bulk* — every layer read at once after P reported the whole prompt final. The
        handle's waits work the same whichever was chosen (``.mode`` says which).
        ``group_layers`` layers move as one step. ``writers`` (push, D transport with
        grants): P rank -> the identity it writes as, where that is not its agent name
        (its certificate's subject under TLS); each is granted exactly its rows' D bytes
        while the stream runs. Arguments and failures as :meth:`pull`; ``timeout`` bounds
        the whole stream. Raises :class:`RequestFailed` (reason ``plan``) at once for what
        cannot start.
        """
        return start_streamed_pull(self, request_id, engine=engine, src_blocks=src_blocks, dst_blocks=dst_blocks,
                                   num_tokens=num_tokens, timeout=timeout, mode=mode, on_failure=on_failure,
                                   group_layers=group_layers, dst_cached_tokens=dst_cached_tokens, writers=writers)

    def _stream_succeeded(self, request_id: str, engine: str, stream: StreamedTransfer,
                          result: TransferResult) -> PullResult:
        self._in_flight.discard(request_id)
        self._received += 1
        self._failed.pop(request_id, None)
        self._succeeded[request_id] = None
        while len(self._succeeded) > _REMEMBERED:
            self._succeeded.popitem(last=False)
        return PullResult(request_id, engine, result.bytes, result.descriptors, result.seconds,
                          stream.plan.source_ranks, result.notified_ranks, stream.plan)

    def _stream_failed(self, failure: FailedRequest) -> RequestFailed:
        self._in_flight.discard(failure.request_id)
        return self._fail(failure)

    async def _restart(self, engine: str, error: BaseException, ends: float) -> tuple[PeerRestartedError,
                                                                                   list[bytes]] | None:
        """Whether ``error`` (a failed read) came from a P rank that restarted: the
        restart and the engine's fresh metadata, or ``None``. Bounded by ``ends``."""
        chain = _causes(error)
        seen = next((e for e in chain if isinstance(e, PeerRestartedError)), None)
        source = self._sources.get(engine)
        fresh: list[bytes] = []
        # any failed read may be a restart (a dead peer surfaces as whatever its transport
        # says): ask the source whenever there is time left to
        if source is not None and ends > anyio.current_time():
            with anyio.move_on_after(max(0.0, ends - anyio.current_time())):
                try:
                    fresh = list(await source())
                except (HybridXferError, OSError) as exc:
                    log.info("%s: could not refresh engine %s metadata: %s", self.name, engine, exc)
        peers = self._engines.get(engine, {})
        for blob in fresh:
            try:
                info = AgentInfo.from_bytes(blob)
            except ConnectError:
                continue
            old = peers.get(info.rank)
            if old is not None and info.incarnation != old.incarnation:
                return PeerRestartedError(f"P rank {info.rank} of engine {engine!r} restarted", peer=old.info.name,
                                          old_incarnation=old.incarnation, new_incarnation=info.incarnation), fresh
        if seen is not None:
            return seen, fresh
        return None

    def _fail(self, failure: FailedRequest) -> RequestFailed:
        self._failed[failure.request_id] = failure
        self._failed_total += 1
        log.info("%s: request %s failed (%s): %s; invalid blocks %s", self.name, failure.request_id,
                 failure.reason, failure.message, dict(failure.invalid_blocks))
        return RequestFailed(failure)

    def failed_requests(self) -> tuple[FailedRequest, ...]:
        """Failures since the last call, oldest first; each is returned exactly once.

        The engine's scheduler calls this once per step and recomputes (or aborts) each
        request: its destination blocks are not valid.
        """
        out = tuple(self._failed.values())
        self._failed.clear()
        return out

    def statistics(self) -> DecodeStatistics:
        return DecodeStatistics(self._agent.statistics(), self._received, self._failed_total, len(self._in_flight))


def _causes(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = error
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


class _Attempt:
    """One request's pull: plan, execute, and on failure the record — once, or twice when
    a restarted P is retried."""

    def __init__(self, connector: DecodeConnector, request_id: str, engine: str, src_blocks: BlockTable,
                 dst_blocks: BlockTable, num_tokens: int | None, on_progress: ProgressCallback | None,
                 step_bytes: int | None, policy: FailurePolicy, invalid: dict[str, tuple[int, ...]]) -> None:
        self.c = connector
        self.request_id, self.engine = request_id, engine
        self.src_blocks, self.dst_blocks, self.num_tokens = src_blocks, dst_blocks, num_tokens
        self.on_progress, self.step_bytes, self.policy, self.invalid = on_progress, step_bytes, policy, invalid
        self.fresh: list[bytes] = []
        self.dst_cached_tokens: int | Mapping[str, int] | None = None

    def _fail(self, reason: FailureReason, message: str, blocks: dict[str, tuple[int, ...]] | None = None,
              rank: int | None = None, intact: int | None = None) -> RequestFailed:
        if self.policy == "recompute" and intact is None:
            intact = 0
        return self.c._fail(FailedRequest(self.request_id, self.engine, reason, message, blocks or self.invalid,
                                          rank, intact))

    async def run(self, ends: float) -> tuple[ExecutablePlan, TransferResult]:
        c = self.c
        peers = c._engines.get(self.engine)
        if peers is None:
            known = ", ".join(c._engines) or "none"
            raise self._fail("plan", f"not connected to engine {self.engine!r} (connected: {known})")
        landed = LandedBytes(c._agent.region_names) if self.policy == "recompute" else None
        try:
            executable = c._agent.plan(peers, request_id=self.request_id, src_blocks=self.src_blocks,
                                       dst_blocks=self.dst_blocks, num_tokens=self.num_tokens, coalesce=c._coalesce,
                                       on_progress=self.on_progress, progress_step_bytes=self.step_bytes,
                                       landed=landed, dst_cached_tokens=self.dst_cached_tokens)
        except (BlockIdError, IncompatibleLayoutsError, ConnectError, TransferError) as exc:
            raise self._fail("plan", str(exc)) from exc
        try:
            remaining = ends - anyio.current_time()
            result = await executable.execute(timeout=None if math.isinf(remaining) else max(0.0, remaining))
        except TransferError as exc:
            intact = self._intact(executable, landed)
            restart = await c._restart(self.engine, exc, ends)
            if restart is not None:
                error, self.fresh = restart
                if error not in _causes(exc):
                    error.__cause__ = exc
                raise self._fail("restarted", str(error), rank=exc.source_rank, intact=intact) from error
            reason: FailureReason = "timeout" if isinstance(exc, TransferTimeout) else "transfer"
            blocks = {g: tuple(b) for g, b in exc.invalid_blocks.items()} or self.invalid
            raise self._fail(reason, str(exc), blocks, exc.source_rank, intact) from exc
        except HybridXferError as exc:  # e.g. ClosedTransportError: the connector is closing
            raise self._fail("transfer", str(exc), intact=self._intact(executable, landed)) from exc
        except anyio.get_cancelled_exc_class():
            self._fail("cancelled", "pull was cancelled", intact=self._intact(executable, landed))
            raise
        return executable, result

    def _intact(self, executable: ExecutablePlan, landed: LandedBytes | None) -> int | None:
        if landed is None:
            return None
        layout = self.c.layout
        tokens = self.num_tokens
        if tokens is None:  # what both sides cover; D lists blocks from token 0 only if P lists no more
            src = self.c._agent.source_layouts(self.c._engines.get(self.engine, {}))[0]
            token_groups = {p.group for p in layout.placements if p.piece.has_tokens}
            caps_d = [len(ids) * layout.logical_block_tokens for g, ids in self.dst_blocks.items() if g in token_groups]
            caps_s = [len(ids) * src.logical_block_tokens for ids in self.src_blocks.values()]
            if not caps_d or max(caps_s, default=0) > min(caps_d):
                return 0
            tokens = min(caps_d)
        return intact_tokens(layout, executable.plan, landed, self.dst_blocks, tokens)

    async def reconnect(self, ends: float, failed: RequestFailed) -> None:
        """Handshake with the engine's fresh metadata (the restarted ranks' new incarnations)."""
        with anyio.move_on_after(max(0.0, ends - anyio.current_time())) as scope:
            try:
                await self.c._handshake(self.engine, self.fresh)
            except HybridXferError as exc:
                raise self._fail("restarted", f"{failed.failure.message}; reconnecting failed: {exc}") from exc
        if scope.cancelled_caught:
            raise self._fail("timeout", f"{failed.failure.message}; reconnecting missed the deadline")

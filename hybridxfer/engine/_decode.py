"""D side: pull a request's blocks from a prefill engine; report every failure per request.

Why a connector over the agent: an engine thinks in requests and block IDs, not in P
ranks and plans. :meth:`DecodeConnector.pull` plans against the right P engine's ranks,
executes, and either returns what moved or raises :class:`RequestFailed` — after
recording the failure for :meth:`DecodeConnector.failed_requests`, so the scheduler can
recompute the request even when the task that awaited the pull has gone.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType

import anyio
import attrs

from hybridxfer.engine._caches import check_caches
from hybridxfer.engine._failures import FailedRequest, FailureReason, RequestFailed
from hybridxfer.errors import (
    BlockIdError,
    ConnectError,
    HybridXferError,
    IncompatibleLayoutsError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.execute import Agent, AgentStatistics, Peer
from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan
from hybridxfer.transport import Transport

__all__ = ["DecodeConnector", "DecodeStatistics", "PullResult"]

log = logging.getLogger("hybridxfer.engine")

#: Block table: KV group name -> logical block IDs of the request, in token order.
BlockTable = Mapping[str, Sequence[int]]


@attrs.frozen
class PullResult:
    """A request whose destination blocks now hold exactly P's state."""

    request_id: str
    engine: str
    bytes: int
    descriptors: int
    seconds: float
    #: P ranks read from, and P ranks told the request is done.
    source_ranks: tuple[int, ...]
    notified_ranks: tuple[int, ...]
    #: The bound plan (descriptors, statistics) for inspection and logging.
    plan: TransferPlan = attrs.field(repr=False)


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
    ) -> None:
        self.layout = layout
        self.name = name
        self.default_timeout = default_timeout
        self._coalesce = coalesce
        self._agent = Agent(name, transport=transport, transport_options=transport_options, role="decode",
                            rank=layout.rank, tp_size=layout.tp, layout=layout)
        self._engines: dict[str, dict[int, Peer]] = {}
        self._failed: collections.OrderedDict[str, FailedRequest] = collections.OrderedDict()
        self._in_flight: set[str] = set()
        self._received = 0
        self._failed_total = 0
        self._registered = False

    @property
    def agent(self) -> Agent:
        return self._agent

    async def __aenter__(self) -> DecodeConnector:
        await self._agent.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport. Idempotent; pulls in flight fail."""
        await self._agent.aclose()

    async def register_caches(self, caches: Mapping[str, object]) -> None:
        """Register one cache tensor per layout region; see ``PrefillConnector.register_caches``."""
        check_caches(self.layout, caches)
        for name in self.layout.region_names:
            await self._agent.register(name, caches[name])
        self._registered = True

    async def connect(self, engine: str, metadata: Sequence[bytes]) -> tuple[int, ...]:
        """Handshake with every rank of prefill engine ``engine`` (one blob per P rank).

        Raises :class:`~hybridxfer.errors.IncompatibleLayoutsError` (another model) or
        :class:`~hybridxfer.errors.ConnectError` (unreachable, or a P rank missing) before
        any byte moves. Returns the P ranks connected. Connecting again replaces the
        engine's peers (e.g. after it restarted).
        """
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
        return tuple(sorted(peers))

    def engines(self) -> tuple[str, ...]:
        return tuple(self._engines)

    async def pull(
        self,
        request_id: str,
        *,
        engine: str,
        src_blocks: BlockTable,
        dst_blocks: BlockTable,
        num_tokens: int | None = None,
        timeout: float | None = None,
    ) -> PullResult:
        """Move one request's state from ``engine`` into ``dst_blocks``.

        ``src_blocks``: P's logical block IDs per P KV group (from P, through the engine's
        proxy); ``dst_blocks``: the blocks D allocated, per D KV group. ``timeout``
        (default :attr:`default_timeout`) bounds the reads.

        On success the P ranks are told, so they free their blocks. On any failure —
        planning refused, a read failed, the deadline passed — raises
        :class:`RequestFailed` and records it for :meth:`failed_requests`; P is not told
        and keeps its blocks until its own lease runs out. On cancellation the
        destination blocks are undefined, the request is recorded as failed with reason
        ``cancelled``, and the cancellation propagates.
        """
        invalid = {g: tuple(int(b) for b in ids) for g, ids in dst_blocks.items()}
        if request_id in self._in_flight:
            raise self._fail(FailedRequest(request_id, engine, "plan", "request is already being pulled", invalid))
        self._in_flight.add(request_id)
        try:
            peers = self._engines.get(engine)
            if peers is None:
                known = ", ".join(self._engines) or "none"
                raise self._fail(FailedRequest(request_id, engine, "plan",
                                               f"not connected to engine {engine!r} (connected: {known})", invalid))
            try:
                executable = self._agent.plan(peers, request_id=request_id, src_blocks=src_blocks,
                                              dst_blocks=dst_blocks, num_tokens=num_tokens, coalesce=self._coalesce)
            except (BlockIdError, IncompatibleLayoutsError, ConnectError, TransferError) as exc:
                raise self._fail(FailedRequest(request_id, engine, "plan", str(exc), invalid)) from exc
            try:
                result = await executable.execute(timeout=self.default_timeout if timeout is None else timeout)
            except TransferError as exc:
                reason: FailureReason = "timeout" if isinstance(exc, TransferTimeout) else "transfer"
                blocks = {g: tuple(b) for g, b in exc.invalid_blocks.items()} or invalid
                raise self._fail(FailedRequest(request_id, engine, reason, str(exc), blocks,
                                               exc.source_rank)) from exc
            except HybridXferError as exc:  # e.g. ClosedTransportError: the connector is closing
                raise self._fail(FailedRequest(request_id, engine, "transfer", str(exc), invalid)) from exc
            except anyio.get_cancelled_exc_class():
                self._fail(FailedRequest(request_id, engine, "cancelled", "pull was cancelled", invalid))
                raise
        finally:
            self._in_flight.discard(request_id)
        self._received += 1
        self._failed.pop(request_id, None)  # a successful retry supersedes an older failure
        return PullResult(request_id, engine, result.bytes, result.descriptors, result.seconds,
                          executable.plan.source_ranks, result.notified_ranks, executable.plan)

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

"""P side: hold the caches, serve them, and say when a request's blocks may be freed.

Why count readers here: with D_TP > P_TP several decode ranks read the same P rank for
one request (each its own head slice), and P must keep the blocks until *all* of them
are done — freeing after the first would hand a block to a new request while another D
rank is still reading it. :func:`decode_consumers` gives the count from the planner's
source rule; :meth:`PrefillConnector.expect` overrides it per request.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType

import anyio
import attrs

from hybridxfer.engine._caches import check_caches
from hybridxfer.errors import ClosedTransportError, InvalidArgumentError, NotStartedError
from hybridxfer.execute import Agent, AgentStatistics, CompletedRequest, Completions, RequestGrant
from hybridxfer.layout import RankLayout
from hybridxfer.plan import Readiness, natural_sources
from hybridxfer.transport import Transport

__all__ = ["FinishedRequest", "PrefillConnector", "PrefillStatistics", "decode_consumers"]

log = logging.getLogger("hybridxfer.engine")


def decode_consumers(src_tp: int, dst_tp: int, src_rank: int) -> int:
    """How many D ranks of a TP-``dst_tp`` engine notify P rank ``src_rank`` per request.

    D_TP >= P_TP: ``dst_tp // src_tp`` (each reads its slice); P_TP > D_TP: 1. This is
    the planner's natural-source rule (:func:`hybridxfer.plan.natural_sources`).
    """
    return sum(src_rank in natural_sources(src_tp, dst_tp, d) for d in range(dst_tp))


@attrs.frozen
class FinishedRequest:
    """Every expected decode rank has read ``request_id``: its P blocks may be freed."""

    request_id: str
    #: Agent names of the D ranks that reported it, sorted.
    readers: tuple[str, ...]


@attrs.frozen
class PrefillStatistics:
    """A snapshot: the agent's counters plus what the connector tracks."""

    agent: AgentStatistics
    requests_finished: int
    #: Requests some, but not all, expected readers have reported.
    requests_partially_read: int


class PrefillConnector:
    """One prefill rank. ``async with PrefillConnector(layout, name=...) as p:``.

    Then :meth:`register_caches`, publish :meth:`metadata` to decoders (any side channel:
    the engine's proxy, a KV store), and consume :meth:`finished_requests` to free blocks.
    Serving starts when the connector is entered and runs until it is closed; close it
    from the task that entered it.
    """

    def __init__(
        self,
        layout: RankLayout,
        *,
        name: str,
        transport: Transport | str = "tcp",
        transport_options: Mapping[str, object] | None = None,
        decode_tp: int | None = None,
    ) -> None:
        self.layout = layout
        self.name = name
        self._agent = Agent(name, transport=transport, transport_options=transport_options, role="prefill",
                            rank=layout.rank, tp_size=layout.tp, layout=layout)
        self._default_consumers = decode_consumers(layout.tp, decode_tp, layout.rank) if decode_tp else 1
        self._expected: dict[str, int] = {}
        self._readers: dict[str, set[str]] = {}
        self._finished: Completions[FinishedRequest] = Completions(f"prefill connector {name!r}")
        self._finished_count = 0
        self._resources: contextlib.AsyncExitStack | None = None
        self._closed = False
        self._registered = False

    @property
    def agent(self) -> Agent:
        """The underlying agent (for logging names, lower-level use)."""
        return self._agent

    async def __aenter__(self) -> PrefillConnector:
        async with contextlib.AsyncExitStack() as stack:
            # Closed in reverse: stop the pump, wake waiters and end the stream, close the agent.
            await stack.enter_async_context(self._agent)
            stack.callback(self._finished.close)
            self._finished.stream(buffer=math.inf)  # from entry on: no finished request is missed
            pump = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(pump.cancel_scope.cancel)
            pump.start_soon(self._pump)
            self._resources = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and close the transport. Idempotent. Waiters see ClosedTransportError."""
        self._closed = True
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.aclose()
        else:
            self._finished.close()
            await self._agent.aclose()

    async def register_caches(self, caches: Mapping[str, object]) -> None:
        """Register one cache tensor per layout region (name -> tensor/array), all at once.

        Checks names and sizes against the layout first and raises
        :class:`~hybridxfer.errors.LayoutError` listing every mismatch, registering nothing.
        """
        check_caches(self.layout, caches)
        for name in self.layout.region_names:
            await self._agent.register(name, caches[name])
        self._registered = True

    def metadata(self) -> bytes:
        """The blob decoders pass to :meth:`DecodeConnector.connect` (after registration)."""
        if not self._registered:
            raise NotStartedError(f"{self.name!r}: register_caches() before publishing metadata")
        return self._agent.metadata()

    def expect(self, request_id: str, consumers: int) -> None:
        """Wait for ``consumers`` distinct decode ranks before finishing ``request_id``."""
        if consumers < 1:
            raise InvalidArgumentError(f"consumers must be >= 1, got {consumers}")
        self._expected[request_id] = consumers
        self._maybe_finish(request_id)

    def layers_ready(self, request_id: str, layers: Iterable[str], tokens_through: int) -> None:
        """The engine's per-layer call from its forward loop: ``layers`` hold their final
        state for tokens ``[0, tokens_through)`` of ``request_id``. Decode ranks streaming
        the request (``DecodeConnector.pull_streamed``) get it at once, later subscribers on
        subscribing. Never blocks; call it from the event loop's thread."""
        self._check_open()
        self._agent.mark_ready(request_id, Readiness(frozenset(layers), tokens_through))

    def grant(self, request_id: str, peers: str | Sequence[str], blocks: Mapping[str, Sequence[int]], *,
              lease: float | None = None) -> tuple[RequestGrant, ...]:
        """Hand ``request_id`` to decode peer(s) ``peers``: only they may read its blocks
        (``blocks``: this rank's block table of the request, KV group -> block IDs) — on a
        transport that requires grants (``transport_options={"require_grants": True}``),
        every other read of them is refused.

        Call it before telling the decoder to pull. The grants end when the request
        finishes (every expected decode rank reported it) or after ``lease`` seconds,
        whichever comes first — give a lease, so a decoder that dies does not keep its
        grant. ``peers``: the identities the transport authenticates (under TLS the
        certificate subjects, else the decode agents' names).
        """
        self._check_open()
        names = (peers,) if isinstance(peers, str) else tuple(peers)
        return tuple(self._agent.grant(request_id, peer, blocks, lease=lease) for peer in names)

    def finished_requests(self) -> AsyncIterator[FinishedRequest]:
        """``async for done in p.finished_requests()``: each finished request exactly once.

        One consumer only (it is a stream). Use it from tasks that end before the
        connector closes (closing it closes the stream).
        """
        self._check_open()
        return self._finished.stream(buffer=math.inf)

    async def wait_request_finished(self, request_id: str, *, timeout: float | None = None) -> FinishedRequest:
        """Wait until every expected decode rank has read ``request_id``.

        Raises :class:`~hybridxfer.errors.TransferTimeout` after ``timeout`` seconds — the
        engine then frees the blocks on its own lease policy (a decoder may have died).
        Cancellation leaves nothing behind.
        """
        done = self._finished.get(request_id)
        if done is not None:
            return done
        self._check_open()
        return await self._finished.wait(request_id, timeout=timeout,
                                         message=f"request not finished by its decoders within {timeout}s")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedTransportError(f"prefill connector {self.name!r} is closed")
        if self._resources is None:
            raise NotStartedError(f"prefill connector {self.name!r} is not started: use `async with`")

    def statistics(self) -> PrefillStatistics:
        return PrefillStatistics(self._agent.statistics(), self._finished_count, len(self._readers))

    async def _pump(self) -> None:
        try:
            async for done in self._agent.completed_requests():
                self._on_completed(done)
        except ClosedTransportError:
            return

    def _on_completed(self, done: CompletedRequest) -> None:
        if self._finished.get(done.request_id) is not None:
            log.warning("%s: %s read %s after it was finished; expected reader count too low?",
                        self.name, done.peer_name, done.request_id)
            return
        self._readers.setdefault(done.request_id, set()).add(done.peer_name)
        self._maybe_finish(done.request_id)

    def _maybe_finish(self, request_id: str) -> None:
        readers = self._readers.get(request_id)
        need = self._expected.get(request_id, self._default_consumers)
        if readers is None or len(readers) < need:
            return
        del self._readers[request_id]
        self._expected.pop(request_id, None)
        finished = FinishedRequest(request_id, tuple(sorted(readers)))
        self._agent.revoke(request_id)  # its blocks may now hold another request
        self._finished.add(request_id, finished)
        self._finished_count += 1
        log.info("%s: request %s finished by %s; its blocks may be freed", self.name, request_id,
                 ", ".join(finished.readers))

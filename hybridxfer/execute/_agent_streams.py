"""The agent's streaming calls: ``plan_stream`` / ``prepare_stream`` on D, ``mark_ready`` on P.

Why a mixin: the agent owns the pieces a stream needs (transport, regions, peers' layouts,
the background task group); these calls only put them together, so they live beside the
agent rather than inside its module. See :mod:`hybridxfer.execute._stream` (D) and
:mod:`hybridxfer.execute._stream_source` (P) for how a stream runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from hybridxfer.errors import IncompatibleLayoutsError
from hybridxfer.execute._stream import StreamedTransfer
from hybridxfer.execute._peer import Peer
from hybridxfer.execute._stream_source import StreamSource
from hybridxfer.execute._stream_start import StreamHost, start_stream
from hybridxfer.execute._stream_wire import StreamMode
from hybridxfer.layout import RankLayout
from hybridxfer.plan import Readiness, StreamSchedule, compile_plan, stream_schedule

if TYPE_CHECKING:
    import anyio.abc


__all__ = ["StreamingMixin"]

log = logging.getLogger("hybridxfer.execute")


class _Agent(StreamHost, Protocol):
    """The rest of what these methods use of the agent they belong to."""

    _closed: bool
    _tasks: anyio.abc.TaskGroup | None
    _streams: dict[str, StreamedTransfer]
    _stream_source: StreamSource

    def _check_open(self) -> None: ...

    def source_layouts(self, peers: Mapping[int, Peer] | Sequence[Peer]) -> tuple[RankLayout, ...]: ...


class StreamingMixin:
    """Streaming methods of :class:`~hybridxfer.execute.Agent` (only it uses this; each
    method works on the agent it is part of)."""

    def plan_stream(self, peers: Mapping[int, Peer] | Sequence[Peer], *, request_id: str,
                    src_blocks: Mapping[str, Sequence[int]], dst_blocks: Mapping[str, Sequence[int]],
                    num_tokens: int | None = None, dst_cached_tokens: int | Mapping[str, int] | None = None,
                    group_layers: int = 1, mode: StreamMode = "pull", timeout: float | None = None,
                    coalesce: bool = True, bulk: bool = False,
                    writers: Mapping[int, str] | None = None) -> StreamedTransfer:
        """Plan one request as a stream of layer groups (:func:`hybridxfer.plan.stream_schedule`)
        and start it: :meth:`prepare_stream` with the schedule built here."""
        agent = cast("_Agent", self)
        agent._check_open()
        if not isinstance(agent.layout, RankLayout):
            raise IncompatibleLayoutsError(f"agent {agent.name!r} has no RankLayout to plan into")
        template = compile_plan(agent.source_layouts(peers), agent.layout, coalesce=coalesce)
        schedule = stream_schedule(template, src_blocks, dst_blocks, num_tokens=num_tokens,
                                   dst_cached_tokens=dst_cached_tokens, group_layers=group_layers)
        return self.prepare_stream(schedule, peers, request_id=request_id, mode=mode, timeout=timeout,
                                   src_blocks=src_blocks, dst_cached_tokens=dst_cached_tokens,
                                   group_layers=group_layers, coalesce=coalesce, bulk=bulk, writers=writers)

    def prepare_stream(self, schedule: StreamSchedule, peers: Mapping[int, Peer] | Sequence[Peer], *,
                       request_id: str, mode: StreamMode = "pull", timeout: float | None = None,
                       src_blocks: Mapping[str, Sequence[int]] | None = None,
                       dst_cached_tokens: int | Mapping[str, int] | None = None, group_layers: int = 1,
                       coalesce: bool = True, bulk: bool = False,
                       writers: Mapping[int, str] | None = None) -> StreamedTransfer:
        """Start streaming ``schedule`` from its source P ranks; returns at once.

        ``pull``: this rank reads each layer group as P reports it ready; ``push``: P
        writes them (the transport must write; ``src_blocks``, ``dst_cached_tokens``,
        ``group_layers`` and ``coalesce`` must be those the schedule was built with, P
        rebuilds it from them). ``timeout`` bounds the whole stream.

        ``bulk`` (pull only): read nothing until a source rank reported every layer final for
        the whole prompt, then all its rows at once — bulk's timing behind this handle (with
        one group, ``group_layers`` >= the layer count, those reads are the bulk plan's rows).
        Push on a transport that keeps grants: each source rank is granted writes into exactly
        the D bytes of its rows while the stream runs (withdrawn as it ends, however it ends);
        ``writers`` maps a P rank to the identity its transport authenticates as where that is
        not its agent name (its certificate's subject under TLS). See
        :class:`StreamedTransfer` for waiting, failures and cancellation. Raises
        :class:`InvalidArgumentError` for what cannot stream (a pipelined P, a push
        subscription too large for a notification), before anything is sent.
        """
        agent = cast("_Agent", self)
        agent._check_open()
        return start_stream(agent, schedule, peers, request_id=request_id, mode=mode, timeout=timeout,
                            src_blocks=src_blocks, dst_cached_tokens=dst_cached_tokens,
                            group_layers=group_layers, coalesce=coalesce, register=self._start_stream, bulk=bulk,
                            writers=writers)

    def _start_stream(self, stream: StreamedTransfer) -> None:
        cast("_Agent", self)._streams[stream.stream_id] = stream
        self._spawn(stream.run)

    def _stream_ended(self, stream: StreamedTransfer) -> None:
        streams = cast("_Agent", self)._streams
        if streams.get(stream.stream_id) is stream:
            del streams[stream.stream_id]

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``task`` in the agent's background task group (ignored once it is closing)."""
        agent = cast("_Agent", self)
        if agent._tasks is None or agent._closed:
            return
        try:
            agent._tasks.start_soon(task)
        except RuntimeError:  # the task group is no longer active: the agent is closing
            log.debug("agent %s: closing, background task not started", agent.name)

    def mark_ready(self, request_id: str, readiness: Readiness) -> None:
        """P side, per layer (group) from the engine's forward loop: ``readiness.layers`` hold
        their final state for tokens ``[0, readiness.tokens_through)``. Sent on to every D
        rank streaming the request, and replayed to one that subscribes later. Never blocks."""
        agent = cast("_Agent", self)
        agent._check_open()
        agent._stream_source.mark_ready(request_id, readiness)

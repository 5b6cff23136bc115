"""Starting a streamed transfer on a D agent: the checks, the subscription, the task.

Why apart from the agent: the agent only owns the pieces (transport, registered regions,
peers' layouts, its task group); putting a stream together from them — refusing what
cannot stream before anything is sent — is one concept of its own.
"""

from __future__ import annotations

import collections
import math
import secrets
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import anyio

from hybridxfer.errors import IncompatibleLayoutsError, InvalidArgumentError, TransferError
from hybridxfer.execute._info import AgentInfo, LayoutLike
from hybridxfer.execute._peer import Peer
from hybridxfer.execute._stats import StatisticsRecorder
from hybridxfer.execute._stream import StreamedTransfer
from hybridxfer.execute._stream_wire import StreamMessage, StreamMode, encode_stream
from hybridxfer.layout import RankLayout
from hybridxfer.plan import StreamSchedule
from hybridxfer.transport import Transport, writable

__all__ = ["StreamHost", "start_stream"]

BlockTable = Mapping[str, Sequence[int]]


class StreamHost(Protocol):
    """What a stream needs of the agent it runs on (:class:`~hybridxfer.execute.Agent`)."""

    _stats: StatisticsRecorder
    _succeeded: collections.OrderedDict[str, None]

    @property
    def name(self) -> str: ...

    @property
    def layout(self) -> LayoutLike | None: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def region_names(self) -> tuple[str, ...]: ...

    def _source_layout(self, info: AgentInfo) -> RankLayout: ...

    def _remember_success(self, request_id: str) -> None: ...

    def _stream_ended(self, stream: StreamedTransfer) -> None: ...

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


def start_stream(agent: StreamHost, schedule: StreamSchedule, peers: Mapping[int, Peer] | Sequence[Peer], *,
                 request_id: str, mode: StreamMode, timeout: float | None, src_blocks: BlockTable | None,
                 dst_cached_tokens: int | Mapping[str, int] | None, group_layers: int, coalesce: bool,
                 register: Callable[[StreamedTransfer], None], bulk: bool = False,
                 writers: Mapping[int, str] | None = None) -> StreamedTransfer:
    """Check, build and start one stream (see :meth:`Agent.prepare_stream`)."""
    if mode not in ("pull", "push"):
        raise InvalidArgumentError(f"mode must be 'pull' or 'push', not {mode!r}")
    if bulk and mode != "pull":
        raise InvalidArgumentError("bulk=True reads once the prompt is final: it needs mode='pull'")
    if writers and mode != "push":
        raise InvalidArgumentError("writers names the identities P ranks write as: it needs mode='push'")
    if timeout is not None and timeout < 0:
        raise InvalidArgumentError(f"timeout must be >= 0, got {timeout}")
    layout = agent.layout
    if not isinstance(layout, RankLayout):
        raise IncompatibleLayoutsError(f"agent {agent.name!r} has no RankLayout to stream into")
    by_rank = dict(peers) if isinstance(peers, Mapping) else {p.rank: p for p in peers}
    if any(agent._source_layout(p.info).pp > 1 for p in by_rank.values()):
        raise InvalidArgumentError("streaming from a pipelined P engine is not supported; use bulk prepare/execute")
    if request_id in agent._succeeded:
        raise TransferError("request already completed; P may have freed its blocks", request_id=request_id,
                            invalid_blocks=dict(schedule.plan.dst_blocks))
    plan = schedule.plan
    push = mode == "push"
    if push:
        writable(agent.transport)  # refuses a transport that cannot write, naming it
        if src_blocks is None:
            raise InvalidArgumentError("push streaming needs src_blocks: P rebuilds the schedule from them")
    stream_id = secrets.token_hex(8)
    subscription = StreamMessage(
        "subscribe", request_id, stream_id, dst_rank=plan.dst_rank, mode=mode, num_tokens=schedule.num_tokens,
        src_blocks={g: tuple(int(b) for b in ids) for g, ids in (src_blocks or {}).items()} if push else {},
        dst_blocks={g: tuple(b) for g, b in plan.dst_blocks.items()} if push else {},
        dst_cached_tokens=dst_cached_tokens if push else None, group_layers=group_layers, coalesce=coalesce,
        expect_bytes=max(plan.statistics.bytes_by_source.values(), default=0),
        expect_rows=max(plan.statistics.descriptors_by_source.values(), default=0), final_only=bulk)
    encode_stream(subscription)  # too large for a notification: refuse now, with nothing sent
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    stream = StreamedTransfer(
        schedule=schedule, request_id=request_id, stream_id=stream_id, mode=mode, transport=agent.transport,
        peers={rank: peer.handle for rank, peer in by_rank.items()}, local_regions=agent.region_names,
        layout=layout, stats=agent._stats, on_success=agent._remember_success, on_end=agent._stream_ended,
        deadline=deadline, subscription=subscription, spawn=agent._spawn, bulk=bulk, writers=writers,
        lease=timeout if timeout else None)
    register(stream)
    return stream

"""P side of a streamed transfer: keep each request's readiness, serve subscribers.

Why P keeps readiness at all: the engine reports a layer final once, when its forward
pass finishes it, and the D rank that wants it may subscribe later (its scheduler
allocated blocks a moment after P started). So every readiness of a request is kept
(the furthest token per layer, a few bytes) and replayed to a late subscriber; then each
new one is sent on as it comes. Kept readiness is bounded (:data:`REMEMBERED_STREAMS`
requests, oldest dropped).

Two kinds of subscriber:

* **pull**: P forwards each readiness; D reads. A subscriber that reads only once the
  whole prompt is final (``final_only``: D's bulk mode) gets that one readiness alone.
* **push**: P rebuilds D's schedule from the subscription (D's block table, P's block
  table, token counts — D's layout P already holds from D's hello; every P rank's layout
  it derives from its own), checks that its share of the plan is the one D expects
  (bytes and rows), writes the rows each readiness makes movable into D's memory, and then
  says ``landed`` with that readiness, so D can record exactly those bytes as in place.

P reaches D by the transport metadata of D's hello. A subscriber's task ends when every
layer P holds is final, on ``unsubscribe``, or when the agent closes.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import attrs
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError, LayoutError
from hybridxfer.execute._done import NOTIFY_TIMEOUT
from hybridxfer.execute._info import AgentInfo
from hybridxfer.execute._stream_wire import StreamMessage, encode_stream
from hybridxfer.layout import RankLayout, rank_layout_from_dict
from hybridxfer.plan import Readiness, compile_plan, stream_schedule
from hybridxfer.transport import PeerHandle, Transport, writable

__all__ = ["REMEMBERED_STREAMS", "StreamSource"]

log = logging.getLogger("hybridxfer.execute")

#: Requests whose readiness a P agent keeps for late subscribers.
REMEMBERED_STREAMS = 4096
#: The longest a subscription is served: a D rank that died without unsubscribing, for a
#: request P never finishes, must not hold a task for ever.
SUBSCRIPTION_SECONDS = 600.0

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@attrs.define
class _Subscriber:
    peer_name: str
    message: StreamMessage
    send: MemoryObjectSendStream[Readiness]
    receive: MemoryObjectReceiveStream[Readiness]
    scope: anyio.CancelScope


class StreamSource:
    """The readiness book and subscribers of one P agent (the agent owns one)."""

    def __init__(self, *, name: str, transport: Transport, layout: object, local_regions: Callable[[], tuple[str, ...]],
                 hellos: Mapping[str, AgentInfo], spawn: Spawn) -> None:
        self._name = name
        self._transport = transport
        self._layout = layout
        self._local_regions = local_regions
        self._hellos = hellos
        self._spawn = spawn
        self._ready: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()
        self._subscribers: dict[str, _Subscriber] = {}  # by stream id
        self._handles: dict[tuple[str, str], PeerHandle] = {}
        self._connecting: dict[tuple[str, str], anyio.Lock] = {}

    # -- the engine's per-layer call ----------------------------------------------------------
    def mark_ready(self, request_id: str, readiness: Readiness) -> None:
        """Record ``readiness`` and send it on to the request's subscribers."""
        if readiness.tokens_through < 0:
            raise InvalidArgumentError(f"tokens_through must be >= 0, got {readiness.tokens_through}")
        book = self._ready.get(request_id)
        if book is None:
            book = self._ready[request_id] = {}
            while len(self._ready) > REMEMBERED_STREAMS:
                self._ready.popitem(last=False)
        for layer in readiness.layers:
            book[layer] = max(book.get(layer, 0), readiness.tokens_through)
        for sub in self._subscribers.values():
            if sub.message.request_id == request_id:
                _offer(sub, readiness)

    def forget(self, request_id: str) -> None:
        """Drop a request's readiness (its blocks were freed)."""
        self._ready.pop(request_id, None)

    # -- D's messages --------------------------------------------------------------------------------
    def on_message(self, peer_name: str, message: StreamMessage) -> None:
        if message.kind == "unsubscribe":
            sub = self._subscribers.pop(message.stream_id, None)
            if sub is not None:
                sub.scope.cancel()
                log.info("agent %s: %s unsubscribed from %s", self._name, peer_name, message.request_id)
            return
        if message.kind != "subscribe" or message.stream_id in self._subscribers:
            return
        send, receive = anyio.create_memory_object_stream[Readiness](math.inf)
        sub = _Subscriber(peer_name, message, send, receive,
                          anyio.CancelScope(deadline=anyio.current_time() + SUBSCRIPTION_SECONDS))
        self._subscribers[message.stream_id] = sub
        by_tokens: dict[int, list[str]] = {}
        for layer, tokens in self._ready.get(message.request_id, {}).items():
            by_tokens.setdefault(tokens, []).append(layer)
        for tokens, layers in sorted(by_tokens.items()):  # the replay, before anything newer
            _offer(sub, Readiness(frozenset(layers), tokens))
        self._spawn(lambda: self._serve(sub))

    async def _serve(self, sub: _Subscriber) -> None:
        msg = sub.message
        try:
            with sub.scope:
                peer = await self._peer(sub.peer_name)
                try:
                    if msg.mode == "pull":
                        await self._forward(sub, peer)
                    else:
                        await self._push(sub, peer)
                except Exception as exc:  # tell D at once, rather than let it wait for its deadline
                    log.warning("agent %s: stream %s to %s failed: %s", self._name, msg.request_id, sub.peer_name, exc)
                    with anyio.move_on_after(NOTIFY_TIMEOUT):
                        await self._transport.notify(peer, encode_stream(
                            StreamMessage("abort", msg.request_id, msg.stream_id, reason=str(exc))))
        except Exception as exc:
            log.warning("agent %s: cannot serve stream %s to %s: %s", self._name, msg.request_id, sub.peer_name, exc)
        finally:
            if self._subscribers.get(msg.stream_id) is sub:
                del self._subscribers[msg.stream_id]
            sub.send.close()
            sub.receive.close()

    async def _peer(self, peer_name: str) -> PeerHandle:
        """A connection to D (from its hello), opened once per D agent incarnation."""
        info = self._hellos.get(peer_name)
        if info is None:
            raise InvalidArgumentError(f"{peer_name!r} subscribed without a hello: cannot reach it")
        key = (peer_name, info.incarnation)
        handle = self._handles.get(key)
        if handle is not None:
            return handle
        async with self._connecting.setdefault(key, anyio.Lock()):
            handle = self._handles.get(key)
            if handle is None:
                with anyio.fail_after(NOTIFY_TIMEOUT):
                    handle = await self._transport.connect(info.transport_metadata)
                self._handles[key] = handle
        return handle

    def _finished(self, done: dict[str, int], num_tokens: int | None) -> bool:
        layers = self._layout.layers if isinstance(self._layout, RankLayout) else ()
        return num_tokens is not None and bool(layers) and all(done.get(n, -1) >= num_tokens for n in layers)

    async def _forward(self, sub: _Subscriber, peer: PeerHandle) -> None:
        """Pull: send each readiness on, until every layer we hold is final — or, for a
        subscriber that reads only then (``final_only``), that one readiness alone."""
        msg, done = sub.message, dict[str, int]()
        layers = self._layout.layers if isinstance(self._layout, RankLayout) else ()
        final_only = msg.final_only and bool(layers) and msg.num_tokens is not None
        async for readiness in sub.receive:
            if final_only:
                for layer in readiness.layers:
                    done[layer] = max(done.get(layer, -1), readiness.tokens_through)
                if self._finished(done, msg.num_tokens):
                    await self._notify(peer, StreamMessage("ready", msg.request_id, msg.stream_id,
                                                           layers=tuple(sorted(layers)),
                                                           tokens_through=msg.num_tokens or 0))
                    return
                continue
            await self._notify(peer, StreamMessage("ready", msg.request_id, msg.stream_id,
                                                   layers=tuple(sorted(readiness.layers)),
                                                   tokens_through=readiness.tokens_through))
            for layer in readiness.layers:
                done[layer] = max(done.get(layer, -1), readiness.tokens_through)
            if self._finished(done, msg.num_tokens):
                return

    async def _push(self, sub: _Subscriber, peer: PeerHandle) -> None:
        """Push: rebuild D's schedule, write what each readiness makes movable, say so."""
        msg = sub.message
        writer = writable(self._transport)
        schedule, rank = self._schedule(sub.peer_name, msg)
        plan = schedule.plan
        mine = plan.descriptors.by_source().get(rank, Descriptors.empty())
        if (mine.total_bytes, len(mine)) != (msg.expect_bytes, msg.expect_rows):
            raise InvalidArgumentError(
                f"P rank {rank} would write {mine.total_bytes} bytes in {len(mine)} rows of request "
                f"{msg.request_id!r}; D planned {msg.expect_bytes} bytes in {msg.expect_rows} rows")
        src_map = _index_map(plan.src_region_names, self._local_regions(), f"agent {self._name!r}")
        dst_map = _index_map(plan.dst_region_names, tuple(peer.region_names), f"peer {peer.name!r}")
        limit = self._transport.capabilities.max_descriptors_per_read
        seen: dict[str, int] = {}
        async for offered in sub.receive:
            # only what the schedule has not seen, within the prompt (it refuses anything else)
            tokens = min(offered.tokens_through, schedule.num_tokens)
            news = frozenset(n for n in offered.layers if seen.get(n, -1) < tokens)
            if not news:
                continue
            seen.update(dict.fromkeys(news, tokens))
            readiness = Readiness(news, tokens)
            rows = schedule.advance(readiness).by_source().get(rank)
            if rows is not None and len(rows):
                rows = attrs.evolve(rows, src_region=src_map[rows.src_region], dst_region=dst_map[rows.dst_region])
                for part in rows.split(limit):
                    await writer.write(peer, part)
            await self._notify(peer, StreamMessage("landed", msg.request_id, msg.stream_id,
                                                   layers=tuple(sorted(readiness.layers)),
                                                   tokens_through=readiness.tokens_through))
            if schedule.complete():
                return

    def _schedule(self, peer_name: str, msg: StreamMessage) -> tuple[Any, int]:
        """D's schedule, rebuilt here, and our global rank in it."""
        own = self._layout
        if not isinstance(own, RankLayout):
            raise InvalidArgumentError(f"agent {self._name!r} has no RankLayout: it cannot push")
        if own.pp > 1:
            raise InvalidArgumentError("push streaming from a pipelined P engine is not supported; use pull")
        info = self._hellos.get(peer_name)
        if info is None or info.layout is None:
            raise InvalidArgumentError(f"{peer_name!r} published no layout to push into")
        try:
            dst = rank_layout_from_dict(info.layout, source=f"<layout of peer {peer_name!r}>")
        except LayoutError as exc:
            raise InvalidArgumentError(f"{peer_name!r} published a layout we cannot read: {exc}") from exc
        ranks = [own if r == own.rank else own.layout.for_rank(
            own.tp, r, num_blocks=own.num_blocks, logical_block_tokens=own.logical_block_tokens,
            kernel_block_tokens=own.kernel_block_tokens) for r in range(own.tp)]
        template = compile_plan(ranks, dst, coalesce=msg.coalesce)
        schedule = stream_schedule(template, msg.src_blocks, msg.dst_blocks, num_tokens=msg.num_tokens,
                                   dst_cached_tokens=msg.dst_cached_tokens, group_layers=msg.group_layers)
        return schedule, own.rank

    async def _notify(self, peer: PeerHandle, message: StreamMessage) -> None:
        with anyio.fail_after(NOTIFY_TIMEOUT):
            await self._transport.notify(peer, encode_stream(message))


def _offer(sub: _Subscriber, readiness: Readiness) -> None:
    try:
        sub.send.send_nowait(readiness)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass  # the subscriber ended


def _index_map(names: tuple[str, ...], registered: tuple[str, ...], where: str) -> np.ndarray[Any, np.dtype[np.int64]]:
    index = {n: i for i, n in enumerate(registered)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InvalidArgumentError(f"{where} has no registered region named {missing}")
    return np.array([index[n] for n in names], dtype=np.int64)

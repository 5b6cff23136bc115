"""D side, streamed: a request's layers load while P still computes it.

Why a handle and not an awaited pull: an engine that overlaps the transfer with its own
work starts the load, then, layer by layer, waits only for the layer it is about to run
(vLLM's ``start_load_kv`` / ``wait_for_layer_load``). :class:`StreamedPull` is that handle
over :class:`~hybridxfer.execute.StreamedTransfer`, with the bulk pull's failure contract:
any failure — also one nobody is waiting for at the moment — is recorded once for
:meth:`DecodeConnector.failed_requests` and raised as :class:`RequestFailed` from every
wait. Its ``invalid_blocks`` are exactly the blocks holding a byte that did not land; the
layers that did land are in the cause (:class:`~hybridxfer.errors.StreamedTransferError`).

Why ``mode="auto"`` (the default): streaming pays only when the prefill lasts long enough
to hide the transfer behind it; for a short prompt each P rank's subscription and
per-layer readiness cost more than they save. ``auto`` streams (pull) when the prompt
holds at least :data:`STREAM_THRESHOLD_TOKENS` tokens per P TP rank, and otherwise
moves the request in bulk once P reports the whole prompt final — behind the same
handle, so the engine's loop does not depend on the choice (:attr:`StreamedPull.mode`
says which was made).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from hybridxfer.engine._failures import FailedRequest, FailurePolicy, FailureReason, RequestFailed
from hybridxfer.engine._intact import intact_tokens
from hybridxfer.errors import (
    BlockIdError,
    ConnectError,
    IncompatibleLayoutsError,
    InvalidArgumentError,
    StreamedTransferError,
    TransferError,
)
from hybridxfer.engine._pull_result import PullResult
from hybridxfer.execute import Agent, Peer, StreamedTransfer, TransferResult
from hybridxfer.layout import RankLayout
from hybridxfer.plan import compile_plan, stream_schedule

__all__ = ["STREAM_THRESHOLD_TOKENS", "StreamBooks", "StreamMode", "StreamedPull", "start_streamed_pull", "streams"]

log = logging.getLogger("hybridxfer.engine")

BlockTable = Mapping[str, Sequence[int]]

#: What a streamed pull asks for: ``auto`` chooses ``pull`` or ``bulk`` by prompt length.
StreamMode = Literal["auto", "pull", "push"]

#: ``mode="auto"`` streams when ``num_tokens / P TP >= STREAM_THRESHOLD_TOKENS``, else bulk.
#: Measured with ``hybridxfer bench --streaming`` (simulated prefill at 400 TFLOP/s per P
#: rank, P TP ranks splitting it; Nemotron-3-Nano and Qwen3-Next over tcp and nixl on a
#: loaded 2-core machine), as bulk's time to decode over pull-stream's (above 1: streaming
#: wins): P1->D1 at 4,096 tokens 1.24-1.55; P4->D2 at 16,384 tokens 0.99-1.52 and at
#: 32,768 1.20-1.36 — it pays from about 4,096 tokens per P rank (a prefill of ~60 ms).
#: Below ~40 ms it loses (P4->D2 at 512-4,096 tokens 0.23-0.64, at 8,192 0.65-0.94): each
#: P rank's subscription and per-layer readiness cost about a millisecond per request.
#: A connector's ``stream_threshold_tokens`` overrides it.
STREAM_THRESHOLD_TOKENS = 4096


class StreamBooks(Protocol):
    """What a streamed pull needs of its decode connector: its agent, engines and books."""

    default_timeout: float | None
    stream_threshold_tokens: int
    _coalesce: bool
    _engines: dict[str, dict[int, Peer]]
    _succeeded: collections.OrderedDict[str, None]
    _in_flight: set[str]

    @property
    def layout(self) -> RankLayout: ...

    @property
    def agent(self) -> Agent: ...

    def _stream_succeeded(self, request_id: str, engine: str, stream: StreamedTransfer,
                          result: TransferResult) -> PullResult: ...

    def _stream_failed(self, failure: FailedRequest) -> RequestFailed: ...


class StreamedPull:
    """One request streaming into a decode rank. From :meth:`DecodeConnector.pull_streamed`."""

    def __init__(self, connector: StreamBooks, stream: StreamedTransfer, *, engine: str,
                 policy: FailurePolicy, dst_blocks: BlockTable) -> None:
        self.request_id = stream.request_id
        self.engine = engine
        #: How the request moves: ``pull`` / ``push`` layer by layer, or ``bulk`` — every
        #: layer at once after P reported the whole prompt final (``mode="auto"`` on a
        #: short prompt). The waits work the same in every mode.
        self.mode: Literal["bulk", "pull", "push"] = "bulk" if stream.bulk else stream.mode
        self.stream = stream
        self._c = connector
        self._policy = policy
        self._dst_blocks = dst_blocks
        self._failed: RequestFailed | None = None
        self._result: PullResult | None = None

    @property
    def landed_layers(self) -> frozenset[str]:
        """Layers wholly in D's memory (valid even if the request fails later)."""
        return self.stream.landed_layers

    async def wait_for_layer_load(self, layer: str, *, timeout: float | None = None) -> None:
        """Return once ``layer`` is in D's memory. Raises :class:`RequestFailed` if the
        request failed first (or ``timeout`` passed: that fails it). Cancellation leaves
        the load running."""
        try:
            await self.stream.wait_for_layer(layer, timeout=timeout)
        except StreamedTransferError as exc:
            raise self._settle_failed(exc) from exc

    async def wait(self, *, timeout: float | None = None) -> PullResult:
        """The whole request: a :class:`PullResult` once every byte landed and P was told.
        Raises :class:`RequestFailed`. Cancellation leaves the load running."""
        try:
            result = await self.stream.wait(timeout=timeout)
        except StreamedTransferError as exc:
            raise self._settle_failed(exc) from exc
        return self._settle_done(result)

    def cancel(self) -> None:
        """Stop loading; the request is recorded failed (``cancelled``) unless it completed."""
        self.stream.cancel()

    def _ended(self, stream: StreamedTransfer) -> None:
        """Records the outcome as the stream ends, whether anybody waits or not."""
        if stream.result is not None:
            self._settle_done(stream.result)
        elif stream.error is not None:
            self._settle_failed(stream.error)

    def _settle_done(self, result: TransferResult) -> PullResult:
        if self._result is None:
            self._result = self._c._stream_succeeded(self.request_id, self.engine, self.stream, result)
        return self._result

    def _settle_failed(self, exc: StreamedTransferError) -> RequestFailed:
        if self._failed is None:
            reason: FailureReason = ("timeout" if exc.timed_out else
                                     "cancelled" if self.stream.cancelled else "transfer")
            intact = None
            if self._policy == "recompute":
                intact = intact_tokens(self._c.layout, self.stream.plan, self.stream.landed, self._dst_blocks,
                                       self.stream.schedule.num_tokens)
            failure = FailedRequest(self.request_id, self.engine, reason, str(exc), exc.invalid_blocks,
                                    exc.source_rank, intact)
            self._failed = self._c._stream_failed(failure)
            self._failed.__cause__ = exc
        return self._failed


def start_streamed_pull(connector: StreamBooks, request_id: str, *, engine: str, src_blocks: BlockTable,
                        dst_blocks: BlockTable, num_tokens: int | None, timeout: float | None, mode: StreamMode,
                        on_failure: FailurePolicy, group_layers: int,
                        dst_cached_tokens: int | Mapping[str, int] | None,
                        writers: Mapping[int, str] | None = None) -> StreamedPull:
    """Plan and start one streamed pull (see :meth:`DecodeConnector.pull_streamed`)."""
    c = connector
    if request_id in c._succeeded:
        raise TransferError(f"request {request_id!r} was already pulled; its blocks are valid "
                            "(P may have freed its own)", request_id=request_id)
    if on_failure not in ("fail", "recompute"):
        raise InvalidArgumentError(f"on_failure must be 'fail' or 'recompute', not {on_failure!r}")
    if mode not in ("auto", "pull", "push"):
        raise InvalidArgumentError(f"mode must be 'auto', 'pull' or 'push', not {mode!r}")
    invalid = {g: tuple(int(b) for b in ids) for g, ids in dst_blocks.items()}

    def refuse(message: str) -> RequestFailed:
        return c._stream_failed(FailedRequest(request_id, engine, "plan", message, invalid,
                                              None, 0 if on_failure == "recompute" else None))

    if request_id in c._in_flight:
        raise refuse("request is already being pulled")
    peers = c._engines.get(engine)
    if peers is None:
        raise refuse(f"not connected to engine {engine!r} (connected: {', '.join(c._engines) or 'none'})")
    budget = c.default_timeout if timeout is None else timeout
    try:
        template = compile_plan(c.agent.source_layouts(peers), c.layout, coalesce=c._coalesce)
        schedule = stream_schedule(template, src_blocks, dst_blocks, num_tokens=num_tokens,
                                   dst_cached_tokens=dst_cached_tokens, group_layers=group_layers)
        src_tp = max(peer.info.tp_size for peer in peers.values())
        bulk = mode == "auto" and not streams(schedule.num_tokens, src_tp, c.stream_threshold_tokens)
        if bulk:  # one group: every layer lands at once, and the reads are the bulk plan's rows
            group_layers = max(1, len(c.layout.layout.layers))
            schedule = stream_schedule(template, src_blocks, dst_blocks, num_tokens=num_tokens,
                                       dst_cached_tokens=dst_cached_tokens, group_layers=group_layers)
        stream = c.agent.prepare_stream(schedule, peers, request_id=request_id,
                                        mode="push" if mode == "push" else "pull", timeout=budget,
                                        src_blocks=src_blocks, dst_cached_tokens=dst_cached_tokens,
                                        group_layers=group_layers, coalesce=c._coalesce, bulk=bulk, writers=writers)
    except (BlockIdError, IncompatibleLayoutsError, ConnectError, TransferError, InvalidArgumentError) as exc:
        raise refuse(str(exc)) from exc
    c._in_flight.add(request_id)
    pull = StreamedPull(c, stream, engine=engine, policy=on_failure, dst_blocks=dst_blocks)
    stream.add_done_callback(pull._ended)
    return pull


def streams(num_tokens: int, src_tp: int, threshold: int) -> bool:
    """``mode="auto"``'s choice: stream a prompt of ``num_tokens`` from a P engine of
    ``src_tp`` TP ranks when each rank computes at least ``threshold`` of its tokens."""
    return num_tokens >= threshold * max(1, src_tp)

"""D side, streamed: a request's layers load while P still computes it.

Why a handle and not an awaited pull: an engine that overlaps the transfer with its own
work starts the load, then, layer by layer, waits only for the layer it is about to run
(vLLM's ``start_load_kv`` / ``wait_for_layer_load``). :class:`StreamedPull` is that handle
over :class:`~hybridxfer.execute.StreamedTransfer`, with the bulk pull's failure contract:
any failure — also one nobody is waiting for at the moment — is recorded once for
:meth:`DecodeConnector.failed_requests` and raised as :class:`RequestFailed` from every
wait. Its ``invalid_blocks`` are exactly the blocks holding a byte that did not land; the
layers that did land are in the cause (:class:`~hybridxfer.errors.StreamedTransferError`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

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

__all__ = ["StreamBooks", "StreamedPull", "start_streamed_pull"]

log = logging.getLogger("hybridxfer.engine")

BlockTable = Mapping[str, Sequence[int]]


class StreamBooks(Protocol):
    """What a streamed pull needs of its decode connector: its agent, engines and books."""

    default_timeout: float | None
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
                        dst_blocks: BlockTable, num_tokens: int | None, timeout: float | None, mode: str,
                        on_failure: FailurePolicy, group_layers: int,
                        dst_cached_tokens: int | Mapping[str, int] | None) -> StreamedPull:
    """Plan and start one streamed pull (see :meth:`DecodeConnector.pull_streamed`)."""
    c = connector
    if request_id in c._succeeded:
        raise TransferError(f"request {request_id!r} was already pulled; its blocks are valid "
                            "(P may have freed its own)", request_id=request_id)
    if on_failure not in ("fail", "recompute"):
        raise InvalidArgumentError(f"on_failure must be 'fail' or 'recompute', not {on_failure!r}")
    if mode not in ("pull", "push"):
        raise InvalidArgumentError(f"mode must be 'pull' or 'push', not {mode!r}")
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
        stream = c.agent.plan_stream(peers, request_id=request_id, src_blocks=src_blocks, dst_blocks=dst_blocks,
                                     num_tokens=num_tokens, dst_cached_tokens=dst_cached_tokens,
                                     group_layers=group_layers, mode="push" if mode == "push" else "pull",
                                     timeout=budget, coalesce=c._coalesce)
    except (BlockIdError, IncompatibleLayoutsError, ConnectError, TransferError, InvalidArgumentError) as exc:
        raise refuse(str(exc)) from exc
    c._in_flight.add(request_id)
    pull = StreamedPull(c, stream, engine=engine, policy=on_failure, dst_blocks=dst_blocks)
    stream.add_done_callback(pull._ended)
    return pull

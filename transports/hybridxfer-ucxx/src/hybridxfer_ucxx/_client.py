"""D side: one connected UCXX peer — its control connection and UCX endpoint.

A read posts every receive first (straight into destination memory, or into a staging
buffer for packed small rows), then sends the READ frame; P's ``DONE`` frame and the
completion of every receive together mean the bytes have landed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from collections.abc import Sequence
from typing import Any

import anyio
import attrs
import numpy as np
import numpy.typing as npt
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import BrokenTransportError, GrantRefusedError, ProtocolError, TransferError, TransferTimeout
from hybridxfer.transport import REFUSAL_PREFIX

from hybridxfer_ucxx._push import READY, send_messages
from hybridxfer_ucxx._schedule import Message, schedule
from hybridxfer_ucxx._serve import DONE
from hybridxfer_ucxx._wire import FrameType, encode_read, encode_write, read_frame, write_frame

__all__ = ["UcxxPeer"]

_WINDOW = 8

U8Array = npt.NDArray[np.uint8]
I64Array = npt.NDArray[np.int64]


@attrs.define(eq=False)
class _Waiter:
    event: anyio.Event = attrs.field(factory=anyio.Event)
    error: Exception | None = None


class UcxxPeer:
    """A connected peer. ``region_names`` is the order ``Descriptors.src_region`` indexes."""

    def __init__(
        self,
        *,
        name: str,
        region_names: Sequence[str],
        region_lengths: Sequence[int],
        stream: ByteStream,
        ucxx: Any,
        worker_address: bytes,
        tag_base: int,
        error_handling: bool,
    ) -> None:
        self._name = name
        self._region_names = tuple(region_names)
        self.region_lengths = tuple(region_lengths)
        self._stream = stream
        self._receiver = BufferedByteReceiveStream(stream)
        self._ucxx = ucxx
        self._worker_address = worker_address
        self._tag_base = tag_base
        self._endpoint: Any = None
        self._error_handling = error_handling
        self._lock = anyio.Lock()
        self._requests = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        #: Writes waiting for the peer's READY (its receives are posted).
        self._ready: dict[int, _Waiter] = {}
        self._write_requests: set[int] = set()
        self._acks: list[_Waiter] = []
        self.broken: Exception | None = None
        #: Our (agent name, worker address), kept to say hello again after an abort.
        self._own: tuple[str, bytes] | None = None
        self._aborted = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def region_names(self) -> Sequence[str]:
        return self._region_names

    async def hello(self, agent: str, own_address: bytes) -> None:
        self._own = (agent, own_address)
        hello = {"agent": agent, "address": own_address.hex(), "tag": self._tag_base, "eh": self._error_handling}
        await self._send(FrameType.HELLO, json.dumps(hello).encode())

    async def run_reader(self) -> None:
        """Dispatch P's frames until the connection ends; then fail everything pending."""
        try:
            while True:
                kind, payload = await read_frame(self._receiver)
                if kind is FrameType.DONE:
                    request, ok = DONE.unpack_from(payload)
                    waiter = self._pending.pop(request, None)
                    # a write refused before READY waits on its READY waiter: wake it too
                    ready = self._ready.pop(request, None)
                    error: TransferError | None = None
                    if not ok:
                        reason = payload[DONE.size :].decode(errors="replace")
                        refusal = GrantRefusedError if reason.startswith(REFUSAL_PREFIX) else TransferError
                        what = "write" if request in self._write_requests else "read"
                        error = refusal(f"peer {self._name!r} refused the {what}: {reason}")
                    for woken in (waiter, ready):
                        if woken is not None:
                            woken.error = woken.error or error
                            woken.event.set()
                elif kind is FrameType.READY:
                    (request,) = READY.unpack_from(payload)
                    if (ready := self._ready.pop(request, None)) is not None:
                        ready.event.set()
                elif kind is FrameType.NOTIFY_ACK and self._acks:
                    self._acks.pop(0).event.set()
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame from {self._name!r}")
        except Exception as exc:
            self._break(exc)
        finally:
            self._break(BrokenTransportError(f"control connection to {self._name!r} closed"))

    def _break(self, exc: Exception) -> None:
        if self.broken is None:
            self.broken = exc
        for waiter in [*self._pending.values(), *self._ready.values(), *self._acks]:
            waiter.error = waiter.error or exc
            waiter.event.set()
        self._pending.clear()
        self._ready.clear()
        self._acks.clear()
        self.abort_endpoint()

    def abort_endpoint(self) -> None:
        """Drop the UCX endpoint; its posted receives are cancelled and never write again."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            self._aborted = True
            endpoint.abort()

    async def _send(self, kind: FrameType, payload: bytes) -> None:
        async with self._lock:
            await write_frame(self._stream, kind, payload)

    async def _ensure_endpoint(self) -> Any:
        """Our UCX endpoint to the peer's worker (made on first use, again after an abort)."""
        if self.broken is not None:
            raise BrokenTransportError(f"peer {self._name!r} is unreachable: {self.broken}") from self.broken
        if self._endpoint is None:
            if self._aborted and self._own is not None:
                # P's endpoint to us may still hold sends of the aborted read (or receives of
                # an aborted write), queued ahead of anything new: a fresh hello makes P
                # replace it (failing those).
                await self.hello(*self._own)
            self._aborted = False
            address = self._ucxx.get_ucx_address_from_buffer(self._worker_address)
            self._endpoint = await self._ucxx.create_endpoint_from_worker_address(
                address, endpoint_error_handling=self._error_handling
            )
        return self._endpoint

    async def write(
        self,
        views: Sequence[U8Array],
        descriptors: Descriptors,
        *,
        zero_copy_bytes: int,
        pack_bytes: int,
        timeout: float | None,
    ) -> None:
        """Push the rows from our ``views`` into the peer's regions (see :mod:`._push`):
        WRITE frame, wait for READY, send the messages, wait for DONE. A refusal (before
        READY: the peer posted nothing) leaves the endpoint as it is; any other failure or
        a cancellation aborts it, like a read's."""
        d = descriptors
        endpoint = await self._ensure_endpoint()
        request = next(self._requests)
        tag = self._tag_base | (request & 0xFFFFFF)
        messages = schedule(d.length, zero_copy_bytes, pack_bytes)
        ready = self._ready[request] = _Waiter()
        done = self._pending[request] = _Waiter()
        self._write_requests.add(request)
        completed = refused = False
        try:
            with anyio.fail_after(timeout):
                await self._send(FrameType.WRITE, encode_write(request, d.dst_region, d.dst_offset, d.length,
                                                               zero_copy_bytes=zero_copy_bytes,
                                                               pack_bytes=pack_bytes))
                await ready.event.wait()
                if ready.error is not None:
                    refused = isinstance(ready.error, TransferError)
                    raise ready.error
                await send_messages(endpoint, views, messages, tag, d.src_region, d.src_offset, d.length)
                await done.event.wait()
                if done.error is not None:
                    raise done.error
            completed = True
        except TimeoutError as exc:
            raise TransferTimeout(f"write to {self._name!r} did not finish within {timeout} s") from exc
        except (TransferError, BrokenTransportError, ProtocolError):
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise BrokenTransportError(f"control connection to {self._name!r} failed: {exc}") from exc
        except Exception as exc:
            raise TransferError(f"write to {self._name!r} failed: {exc}") from exc
        finally:
            self._pending.pop(request, None)
            self._ready.pop(request, None)
            self._write_requests.discard(request)
            if not (completed or refused) and self._endpoint is endpoint:
                self.abort_endpoint()

    async def read(
        self,
        views: Sequence[U8Array],
        descriptors: Descriptors,
        *,
        zero_copy_bytes: int,
        pack_bytes: int,
        timeout: float | None,
    ) -> None:
        d = descriptors
        src_region, src_offset, dst_region, dst_offset, length = (
            d.src_region, d.src_offset, d.dst_region, d.dst_offset, d.length)
        endpoint = await self._ensure_endpoint()
        request = next(self._requests)
        tag = self._tag_base | (request & 0xFFFFFF)
        messages = schedule(length, zero_copy_bytes, pack_bytes)
        buffers: list[U8Array] = []
        for message in messages:
            if message.packed:
                buffers.append(np.empty(message.nbytes, dtype=np.uint8))
            else:
                r = int(message.rows[0])
                buffers.append(views[dst_region[r]][dst_offset[r] : dst_offset[r] + length[r]])

        async def receive(message: Message, buf: U8Array) -> None:
            await endpoint.recv(buf, tag=tag, force_tag=True)
            if message.packed:  # scatter as each pack lands, so bytes arrive progressively
                at = 0
                for r in message.rows.tolist():
                    n = int(length[r])
                    views[dst_region[r]][dst_offset[r] : dst_offset[r] + n] = buf[at : at + n]
                    at += n

        # Receives are posted in schedule order (the order P sends in; UCX matches
        # same-tag messages from one sender in order), at most ``_WINDOW`` at a time: it
        # bounds staging memory, and P's later rendezvous sends wait for us, so bytes land
        # progressively and a peer dying mid-read cannot look like a completed read.
        inflight: collections.deque[asyncio.Task[None]] = collections.deque()

        async def receive_all() -> None:
            for message, buf in zip(messages, buffers, strict=True):
                if len(inflight) >= _WINDOW:
                    await inflight.popleft()
                inflight.append(asyncio.ensure_future(receive(message, buf)))
            while inflight:
                await inflight.popleft()

        receives = asyncio.ensure_future(receive_all())
        waiter = self._pending[request] = _Waiter()
        completed = False
        try:
            with anyio.fail_after(timeout):
                await self._send(FrameType.READ, encode_read(request, src_region, src_offset, length))
                await waiter.event.wait()
                if waiter.error is not None:
                    raise waiter.error
                await receives
            completed = True
        except TimeoutError as exc:
            raise TransferTimeout(f"read from {self._name!r} did not finish within {timeout} s") from exc
        except (TransferError, BrokenTransportError, ProtocolError):
            raise
        except Exception as exc:
            raise TransferError(f"read from {self._name!r} failed: {exc}") from exc
        finally:
            self._pending.pop(request, None)
            if not completed:
                receives.cancel()
                for task in inflight:
                    task.cancel()
                if self._endpoint is endpoint:
                    self.abort_endpoint()

    async def notify(self, message: bytes) -> None:
        if self.broken is not None:
            raise BrokenTransportError(f"peer {self._name!r} is unreachable: {self.broken}")
        waiter = _Waiter()
        self._acks.append(waiter)
        try:
            await self._send(FrameType.NOTIFY, message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise BrokenTransportError(f"notification to {self._name!r} failed: {exc}") from exc
        await waiter.event.wait()
        if waiter.error is not None:
            raise BrokenTransportError(f"notification to {self._name!r} failed: {waiter.error}")

    async def aclose(self) -> None:
        self._break(BrokenTransportError("transport closed"))
        await self._stream.aclose()

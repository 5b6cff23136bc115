"""Writes (push) over UCXX, two-sided: the serving side receives into its own regions.

A writer sends a ``WRITE`` control frame (destination rows plus the message schedule it
will send by); the serving side checks every row against *its* regions, posts tag
receives straight into them (small rows packed into staging buffers and scattered as
each pack lands), answers ``READY`` and, once every receive has completed, ``DONE`` —
only then are the bytes in its memory. Why ``READY`` before the bytes (one more control
round trip than a read): UCX keeps unmatched eager messages in its own buffers and parks
unmatched rendezvous sends, so bytes sent towards a refused request would linger or
hang; after ``READY`` every byte has a receive waiting in order. The schedule travels in
the frame so both sides cut messages identically even when their options differ.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridxfer.transport import ReadAuthorizer, bounds_problem

from hybridxfer_ucxx._schedule import Message, schedule
from hybridxfer_ucxx._wire import FrameType, decode_write

__all__ = ["DONE", "MAX_PACK_BYTES", "READY", "WINDOW", "receive_messages", "send_messages", "serve_write"]

#: ``DONE``'s payload head (request, ok), then the reason of a refusal; READ and WRITE alike.
DONE = struct.Struct("<QB")
READY = struct.Struct("<Q")
#: Receives posted at once (bounds staging memory: at most WINDOW packs in flight).
WINDOW = 8
#: Largest pack a writer may announce (each staging buffer holds one pack).
MAX_PACK_BYTES = 64 << 20

U8Array = npt.NDArray[np.uint8]
I64Array = npt.NDArray[np.int64]


async def receive_messages(endpoint: Any, views: Sequence[U8Array], messages: Sequence[Message], tag: int,
                           region: I64Array, offset: I64Array, length: I64Array, window: int = WINDOW) -> None:
    """Receive ``messages`` (in the order the sender sends them) into the rows
    (``region``, ``offset``, ``length``) of ``views``: zero-copy rows in place, packs into
    staging buffers scattered as each lands; at most ``window`` receives posted at once.
    Cancellation cancels the posted receives (abort the endpoint too, so none completes
    later)."""

    async def receive(message: Message) -> None:
        if message.packed:
            buf = np.empty(message.nbytes, dtype=np.uint8)
        else:
            r = int(message.rows[0])
            buf = views[region[r]][offset[r] : offset[r] + length[r]]
        await endpoint.recv(buf, tag=tag, force_tag=True)
        if message.packed:
            at = 0
            for r in message.rows.tolist():
                n = int(length[r])
                views[region[r]][offset[r] : offset[r] + n] = buf[at : at + n]
                at += n

    inflight: collections.deque[asyncio.Task[None]] = collections.deque()
    try:
        for message in messages:
            if len(inflight) >= window:
                await inflight.popleft()
            inflight.append(asyncio.ensure_future(receive(message)))
        while inflight:
            await inflight.popleft()
    finally:
        for task in inflight:
            task.cancel()


async def send_messages(endpoint: Any, views: Sequence[U8Array], messages: Sequence[Message], tag: int,
                        region: I64Array, offset: I64Array, length: I64Array) -> None:
    """Send ``messages`` in order from the rows of ``views`` (packs gathered into one
    buffer each, zero-copy rows straight from memory), all posted at once."""
    sends = []
    for message in messages:
        rows = message.rows.tolist()
        if message.packed:
            buf = np.concatenate([views[region[r]][offset[r] : offset[r] + length[r]] for r in rows])
        else:
            r = rows[0]
            buf = views[region[r]][offset[r] : offset[r] + length[r]]
        sends.append(endpoint.send(buf, tag=tag, force_tag=True))
    await asyncio.gather(*sends)


async def serve_write(payload: bytes, *, endpoint: Any, tag_base: int, regions: Sequence[U8Array],
                      reply: Callable[[FrameType, bytes], Awaitable[None]], agent: str = "?",
                      authorize: ReadAuthorizer | None = None) -> None:
    """Serve one ``WRITE`` frame: refuse it (``DONE(ok=0)``, nothing received), or post the
    receives, answer ``READY`` and answer ``DONE`` when every byte has landed.

    ``authorize`` (write grants): asked, after the bounds check, with the writer's declared
    agent name and the rows it would fill; its reason refuses the whole frame."""
    req = decode_write(payload)
    problem = bounds_problem(req.dst_region, req.dst_offset, req.length, [len(v) for v in regions],
                             side="destination")
    if problem is None and not 0 < req.pack_bytes <= MAX_PACK_BYTES:
        problem = f"pack size {req.pack_bytes} outside (0, {MAX_PACK_BYTES}]"
    if problem is None and endpoint is None:
        problem = "WRITE before HELLO"
    if problem is None and authorize is not None:
        refused = authorize(agent, req.dst_region, req.dst_offset, req.length)
        if refused is not None:
            await reply(FrameType.DONE, DONE.pack(req.request, 0) + refused.encode())
            return
    if problem is not None:
        await reply(FrameType.DONE, DONE.pack(req.request, 0) + f"no byte written: {problem}".encode())
        return
    tag = tag_base | (req.request & 0xFFFFFF)
    messages = schedule(req.length, req.zero_copy_bytes, req.pack_bytes)
    receives = asyncio.ensure_future(
        receive_messages(endpoint, regions, messages, tag, req.dst_region, req.dst_offset, req.length))
    try:
        await reply(FrameType.READY, READY.pack(req.request))
        await receives
    except Exception as exc:
        await reply(FrameType.DONE, DONE.pack(req.request, 0) + f"receive failed: {exc}".encode())
        return
    finally:
        receives.cancel()
    await reply(FrameType.DONE, DONE.pack(req.request, 1))

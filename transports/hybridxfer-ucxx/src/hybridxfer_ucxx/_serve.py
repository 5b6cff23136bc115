"""P side: serve one D's control connection, sending requested bytes over UCX tags
(and, for a writer's WRITE frames, receiving into our regions: :mod:`._push`).

Why P validates again: D checked the rows against our published table, but we never
send memory we did not register, whatever a peer asks for — a bad row refuses the whole
request with ``DONE(ok=0)`` before any byte is sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import json
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hybridxfer.errors import ProtocolError
from hybridxfer.transport import Notification, ReadAuthorizer, bounds_problem

from hybridxfer_ucxx._push import DONE, serve_write
from hybridxfer_ucxx._schedule import schedule
from hybridxfer_ucxx._wire import FrameType, decode_read, read_frame, write_frame

__all__ = ["DONE", "serve_connection"]


log = logging.getLogger("hybridxfer_ucxx.serve")


async def serve_connection(
    stream: ByteStream,
    *,
    ucxx: Any,
    views: Callable[[], Sequence[npt.NDArray[np.uint8]]],
    deliver: Callable[[Notification], None],
    zero_copy_bytes: int,
    pack_bytes: int,
    authorize: ReadAuthorizer | None = None,
    authorize_write: ReadAuthorizer | None = None,
) -> None:
    """Serve frames until the peer disconnects. Cancellation drops the connection.

    ``authorize`` (grants): asked before any byte of a READ is sent, with the agent name
    the peer declared in its HELLO — UCXX connections are not authenticated, so that
    name is the peer's word (``docs/security.md``). ``authorize_write``: the same for the
    rows of a WRITE, against write grants, before any receive is posted.
    """
    receiver = BufferedByteReceiveStream(stream)
    lock = anyio.Lock()
    endpoint: Any = None
    agent = "?"
    tag_base = 0

    async def reply(kind: FrameType, payload: bytes) -> None:
        async with lock:
            await write_frame(stream, kind, payload)

    async def serve_read(payload: bytes) -> None:
        request, src_region, src_offset, length = decode_read(payload)
        regions = views()
        problem = bounds_problem(src_region, src_offset, length, [len(v) for v in regions], side="source")
        if problem is not None or endpoint is None:
            reason = problem or "READ before HELLO"
            await reply(FrameType.DONE, DONE.pack(request, 0) + reason.encode())
            return
        refused = authorize(agent, src_region, src_offset, length) if authorize is not None else None
        if refused is not None:
            log.warning("ucxx: refused READ %d from %s, no byte sent: %s", request, agent, refused)
            await reply(FrameType.DONE, DONE.pack(request, 0) + refused.encode())
            return
        tag = tag_base | (request & 0xFFFFFF)
        sends = []
        for message in schedule(length, zero_copy_bytes, pack_bytes):
            rows = message.rows.tolist()
            if message.packed:
                buf = np.concatenate(
                    [regions[src_region[r]][src_offset[r] : src_offset[r] + length[r]] for r in rows]
                )
            else:
                r = rows[0]
                buf = regions[src_region[r]][src_offset[r] : src_offset[r] + length[r]]
            sends.append(endpoint.send(buf, tag=tag, force_tag=True))
        try:
            await asyncio.gather(*sends)
        except Exception as exc:
            await reply(FrameType.DONE, DONE.pack(request, 0) + f"send failed: {exc}".encode())
            return
        await reply(FrameType.DONE, DONE.pack(request, 1))

    try:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    kind, payload = await read_frame(receiver)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                    tg.cancel_scope.cancel()
                    return
                if kind is FrameType.HELLO:
                    hello = json.loads(payload)
                    agent, tag_base = str(hello["agent"]), int(hello["tag"])
                    address = ucxx.get_ucx_address_from_buffer(bytes.fromhex(hello["address"]))
                    if endpoint is not None:  # D aborted a read and reconnects: drop its stale sends
                        endpoint.abort()
                    endpoint = await ucxx.create_endpoint_from_worker_address(
                        address, endpoint_error_handling=bool(hello.get("eh", True))
                    )
                elif kind is FrameType.READ:
                    tg.start_soon(serve_read, payload)
                elif kind is FrameType.WRITE:  # push into our regions (see _push)
                    tg.start_soon(functools.partial(serve_write, payload, endpoint=endpoint, tag_base=tag_base,
                                                    regions=views(), reply=reply, agent=agent,
                                                    authorize=authorize_write))
                elif kind is FrameType.NOTIFY:
                    deliver(Notification(agent, payload))
                    await reply(FrameType.NOTIFY_ACK, b"")
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame from {agent!r}")
    finally:
        if endpoint is not None:
            endpoint.abort()
        with anyio.CancelScope(shield=True):
            await stream.aclose()

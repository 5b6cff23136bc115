"""The TCP transport's worker-thread I/O: a READ exchange runs in one thread call on a
blocking socket whose stall bound is the kernel's (``SO_RCVTIMEO``), and a READ reply's
frame leaves in the same ``sendmsg`` as its first payload bytes.

These pin what the conformance suite cannot see from outside: a silent peer still ends in
``TimeoutError`` (never a hang), the socket is handed back non-blocking for the event loop,
and the reply stream is byte-exact however the views fall across ``IOV_MAX`` chunks.
"""

from __future__ import annotations

import functools
import socket

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from hybridxfer.transport.tcp._io import (
    IOV_MAX,
    recv_exactly_blocking,
    run_blocking,
    send_runs,
    send_views_blocking,
)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.mark.anyio
async def test_a_silent_peer_ends_the_blocking_receive_with_timeout_error() -> None:
    a, b = _pair()
    with a, b, anyio.fail_after(20):
        with pytest.raises(TimeoutError, match="no progress"):
            await run_blocking(a, functools.partial(recv_exactly_blocking, a, 12), 0.2)
        assert a.getblocking() is False  # handed back to the event loop's mode


@pytest.mark.anyio
async def test_run_blocking_returns_the_exchange_result_and_restores_non_blocking() -> None:
    a, b = _pair()
    with a, b, anyio.fail_after(20):
        b.sendall(b"hello world!")

        def exchange() -> bytes:
            send_views_blocking(a, [b"ping", memoryview(b"-pong")])
            return recv_exactly_blocking(a, 12)

        assert await run_blocking(a, exchange, 5.0) == b"hello world!"
        assert a.getblocking() is False
        b.setblocking(True)
        assert b.recv(9, socket.MSG_WAITALL) == b"ping-pong"


def _expected(head: bytes, memory: list[npt.NDArray[np.uint8]],
              runs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]) -> bytes:
    parts = [head] + [memory[r][o:o + n].tobytes() for r, o, n in zip(*(c.tolist() for c in runs), strict=True)]
    return b"".join(parts)


@pytest.mark.anyio
@pytest.mark.parametrize("rows", [0, 3, IOV_MAX - 1, IOV_MAX, 2 * IOV_MAX + 5])
async def test_send_runs_puts_the_head_first_then_every_run_in_order(rows: int) -> None:
    rng = np.random.default_rng(rows)
    memory = [rng.integers(0, 256, 5000, dtype=np.uint8), rng.integers(0, 256, 7000, dtype=np.uint8)]
    region = rng.integers(0, 2, rows).astype(np.int64)
    length = rng.integers(1, 4, rows).astype(np.int64)
    offset = np.array([rng.integers(0, 4990) for _ in range(rows)], dtype=np.int64)
    runs = (region, offset, length)
    head = b"READ_OK-frame"
    want = _expected(head, memory, runs)
    a, b = _pair()
    got = bytearray()
    with a, b, anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                while len(got) < len(want):
                    await anyio.wait_readable(b)
                    got.extend(b.recv(1 << 16))

            tg.start_soon(drain)
            await send_runs(a, [m.data for m in memory], runs, 5.0, head=head)
    assert bytes(got) == want

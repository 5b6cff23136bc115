"""The exact class of every failure the reliability suite provokes, and of its cause.

Why exact types: the other reliability tests catch a level (``TransferError``) and check
what it says; an engine dispatches on the class (recompute on ``TransferError``,
reconnect when the cause is a ``BrokenTransportError``, back off on a timeout), so a
layer that re-wraps a ``TransferTimeout`` as a plain ``TransferError``, or lets a
``ValueError`` out, breaks it silently. Each case provokes the failure for real and
asserts ``type(error) is`` the documented class, and the class of ``__cause__`` where a
lower layer's error is chained.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import numpy as np
import pytest

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import (
    AuthenticationError,
    BlockIdError,
    BrokenTransportError,
    ClosedTransportError,
    IncompatibleLayoutsError,
    NotStartedError,
    ProtocolError,
    RegistrationError,
    TransferError,
    TransferTimeout,
)
from hybridxfer.execute import Agent
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.testing._checks import region_of
from hybridxfer.testing._cross_process import PeerProcess, make_plan
from hybridxfer.testing._peer_process import StaticLayout
from hybridxfer.transport.tcp import TcpTransport
from hybridxfer.transport.tcp._wire import parse_header
from tests.reliability._support import OPTIONS, hybrid_layout, hybrid_world, rank_layout

TOKENS = 40
SIZE = 1 << 20

Provoke = Callable[[], Awaitable[BaseException]]


async def _raised(call: Awaitable[object]) -> BaseException:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the call succeeded")


def _sync_raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call succeeded")


@contextlib.asynccontextmanager
async def _tcp_d(dst: np.ndarray, **options: object) -> AsyncIterator[Agent]:
    async with Agent("d", transport="tcp", transport_options={**OPTIONS["tcp"], **options}, role="decode",
                     layout=StaticLayout("d", "conformance-model")) as d:
        await d.register("dst", dst)
        yield d


async def peer_killed() -> BaseException:
    """P SIGKILLed before the read: the request's TransferError, chained to the broken connection."""
    async with _tcp_d(np.zeros(SIZE, np.uint8)) as d, PeerProcess.spawn("tcp", OPTIONS["tcp"], size=SIZE) as p:
        peer = await d.connect(p.metadata)
        p.kill()
        await p.process.wait()
        return await _raised(d.prepare(make_plan({0: (0, 0, 0, 0, SIZE)}), [peer], "killed").execute(timeout=10))


@contextlib.asynccontextmanager
async def _stopped(p: PeerProcess) -> AsyncIterator[None]:
    os.kill(p.process.pid, signal.SIGSTOP)  # alive, sockets open, never answers
    try:
        yield
    finally:
        os.kill(p.process.pid, signal.SIGCONT)


async def peer_stalled_past_deadline() -> BaseException:
    """A silent P and the execute deadline: TransferTimeout, nothing below it."""
    async with _tcp_d(np.zeros(SIZE, np.uint8)) as d, PeerProcess.spawn("tcp", OPTIONS["tcp"], size=SIZE) as p:
        peer = await d.connect(p.metadata)
        async with _stopped(p):
            return await _raised(d.prepare(make_plan({0: (0, 0, 0, 0, SIZE)}), [peer], "stalled").execute(timeout=0.5))


async def peer_stalled_past_transport_deadline() -> BaseException:
    """A silent P and the transport's own stall deadline: the transport's TransferTimeout
    stays a TransferTimeout through the executor (it used to become a plain TransferError)."""
    async with _tcp_d(np.zeros(SIZE, np.uint8), stall_timeout=0.5) as d, \
            PeerProcess.spawn("tcp", OPTIONS["tcp"], size=SIZE) as p:
        peer = await d.connect(p.metadata)
        async with _stopped(p):
            return await _raised(d.prepare(make_plan({0: (0, 0, 0, 0, SIZE)}), [peer], "stalled").execute(timeout=30))


async def bad_block_ids() -> BaseException:
    async with hybrid_world("loopback", tokens=TOKENS) as w:
        src = contiguous_block_tables(w.d.source_layouts(w.peers)[0], TOKENS)
        dst = {**contiguous_block_tables(w.dst, TOKENS), "attention.0": [0, 10**9]}
        return _sync_raised(lambda: w.d.plan(w.peers, request_id="bad", src_blocks=src, dst_blocks=dst,
                                             num_tokens=TOKENS))


async def peer_of_another_model() -> BaseException:
    dst = rank_layout(hybrid_layout(), 1, 0, TOKENS)
    src = rank_layout(hybrid_layout(head_dim=32), 1, 0, TOKENS)
    async with Agent("p", transport="loopback", role="prefill", layout=src) as p, \
            Agent("d", transport="loopback", role="decode", layout=dst) as d:
        return await _raised(d.connect(p.metadata()))


async def lost_notification() -> BaseException:
    """P waits for a 'done' nobody sends: TransferTimeout (also a TimeoutError)."""
    async with Agent("p", transport="loopback", role="prefill") as p:
        return await _raised(p.wait_request_done("never", timeout=0.05))


async def same_request_twice() -> BaseException:
    dst = np.zeros(SIZE, np.uint8)
    async with Agent("p", transport="loopback", role="prefill", layout=StaticLayout("p", "m")) as p, \
            Agent("d", transport="loopback", role="decode", layout=StaticLayout("d", "m")) as d:
        await p.register("src", np.ones(SIZE, np.uint8))
        await d.register("dst", dst)
        peer = await d.connect(p.metadata())
        executable = d.prepare(make_plan({0: (0, 0, 0, 0, SIZE)}), [peer], "once")
        await executable.execute(timeout=10)
        return await _raised(executable.execute(timeout=10))


@contextlib.asynccontextmanager
async def _tcp_pair(**d_options: object) -> AsyncIterator[tuple[TcpTransport, TcpTransport]]:
    secret = str(OPTIONS["tcp"]["secret"])
    p = TcpTransport(name="p", secret=secret)
    d = TcpTransport(name="d", **{"secret": secret, **d_options})  # type: ignore[arg-type]
    async with p, d:
        yield p, d


async def range_outside_destination() -> BaseException:
    """Refused on the reading side, before a frame is sent."""
    src, dst = np.ones(SIZE, np.uint8), np.zeros(SIZE, np.uint8)
    async with _tcp_pair() as (p, d):
        await p.register([region_of("src", src)])
        await d.register([region_of("dst", dst)])
        peer = await d.connect(p.local_metadata())
        return await _raised(d.read(peer, _row(0, 0, SIZE, SIZE)))


async def range_outside_source() -> BaseException:
    """Refused by the serving side (READ_ERR): no byte is served."""
    src, dst = np.ones(SIZE, np.uint8), np.zeros(2 * SIZE, np.uint8)
    async with _tcp_pair() as (p, d):
        await p.register([region_of("src", src)])
        await d.register([region_of("dst", dst)])
        peer = await d.connect(p.local_metadata())
        return await _raised(d.read(peer, _row(SIZE, 0, 0, SIZE)))


def _row(src_offset: int, dst_offset: int, length: int, extra: int) -> Descriptors:
    """One row reading ``length`` bytes (+ ``extra`` past the end of one side)."""
    def col(value: int) -> np.ndarray:
        return np.array([value], dtype=np.int64)

    return Descriptors(col(0), col(src_offset), col(0), col(dst_offset), col(length + extra))


async def wrong_secret() -> BaseException:
    async with TcpTransport(name="p", secret="one") as p, TcpTransport(name="d", secret="two") as d:
        return await _raised(d.connect(p.local_metadata()))


async def malformed_frame() -> BaseException:
    await anyio.lowlevel.checkpoint()
    return _sync_raised(lambda: parse_header(b"GARBAGE-HEADER"[:12]))


async def region_registered_twice() -> BaseException:
    memory = np.zeros(64, np.uint8)
    async with Agent("a", transport="loopback") as agent:
        await agent.register("r", memory)
        return await _raised(agent.register("r", memory))


async def transport_region_registered_twice() -> BaseException:
    memory = np.zeros(64, np.uint8)
    async with TcpTransport(name="a") as transport:
        await transport.register([region_of("r", memory)])
        return await _raised(transport.register([region_of("r", memory)]))


async def transport_not_started() -> BaseException:
    return await _raised(TcpTransport(name="a").register([region_of("r", np.zeros(64, np.uint8))]))


async def agent_not_started() -> BaseException:
    return await _raised(Agent("a", transport="loopback").register("r", np.zeros(64, np.uint8)))


async def used_after_close() -> BaseException:
    transport = TcpTransport(name="a")
    async with transport:
        pass
    return await _raised(transport.register([region_of("r", np.zeros(64, np.uint8))]))


#: case -> (provoke it, the exact class raised, the exact class of its cause or None for no cause)
CASES: dict[str, tuple[Provoke, type[BaseException], type[BaseException] | None]] = {
    "peer_killed": (peer_killed, TransferError, BrokenTransportError),
    "peer_stalled_past_deadline": (peer_stalled_past_deadline, TransferTimeout, None),
    "peer_stalled_past_transport_deadline": (peer_stalled_past_transport_deadline, TransferTimeout, TransferTimeout),
    "bad_block_ids": (bad_block_ids, BlockIdError, None),
    "peer_of_another_model": (peer_of_another_model, IncompatibleLayoutsError, None),
    "lost_notification": (lost_notification, TransferTimeout, None),
    "same_request_twice": (same_request_twice, TransferError, None),
    "range_outside_destination": (range_outside_destination, TransferError, None),
    "range_outside_source": (range_outside_source, TransferError, None),
    "wrong_secret": (wrong_secret, AuthenticationError, None),
    "malformed_frame": (malformed_frame, ProtocolError, None),
    "region_registered_twice": (region_registered_twice, RegistrationError, None),
    "transport_region_registered_twice": (transport_region_registered_twice, RegistrationError, None),
    "transport_not_started": (transport_not_started, NotStartedError, None),
    "agent_not_started": (agent_not_started, NotStartedError, None),
    "used_after_close": (used_after_close, ClosedTransportError, None),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(CASES))
async def test_failure_has_its_exact_type(case: str) -> None:
    """Each provoked failure raises exactly its documented class, chained to exactly the
    lower layer's error when there is one; timeouts are also ``TimeoutError`` and
    registration errors also ``ValueError``, for code written against the builtins."""
    provoke, expected, cause = CASES[case]
    with anyio.fail_after(60):
        error = await provoke()
    assert type(error) is expected, repr(error)
    got_cause = None if error.__cause__ is None else type(error.__cause__)
    assert got_cause is cause, repr(error.__cause__)
    assert isinstance(error, TimeoutError) == (expected is TransferTimeout)
    assert isinstance(error, ValueError) == (expected is RegistrationError)
    if isinstance(error, TransferError) and case.startswith("peer_"):
        assert error.request_id is not None and error.invalid_blocks == {"kv": (0,)}

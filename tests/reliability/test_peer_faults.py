"""P-side faults against real peer processes, for every transport that crosses processes.

Why this file exists next to the conformance suite: the suite proves each kill ends in a
``TransferError``; here every fault also has to (1) end within the configured deadline,
(2) report *exactly* the plan's destination blocks invalid, (3) leave no thread or task
behind in D, and (4) leave D able to finish the next transfer from a healthy peer
byte-exactly — the four things an engine relies on to recompute and carry on.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Sequence

import anyio
import numpy as np
import pytest

from hybridxfer.errors import TransferError, TransferTimeout
from hybridxfer.execute import Agent, ExecutablePlan, Peer
from hybridxfer.plan import TransferPlan
from hybridxfer.testing._cross_process import PeerProcess, make_plan
from hybridxfer.testing._peer_process import StaticLayout, pattern_bytes
from hybridxfer.testing.soak import ResourceSnapshot, resource_snapshot, wait_settled
from tests.reliability._support import CROSS_PROCESS, OPTIONS

SENTINEL = 0xAB
SIZE = 128 << 20
PIECE = 4096
SMALL = 1 << 20
#: Blocks the hand-written plans claim to fill: the error must name exactly these.
DST_BLOCKS = {"attention.0": (7, 8, 9), "mamba.0": (2,)}
#: The deadline each faulty execution runs under.
DEADLINE = 10.0
#: The deadline of the stalled execution (a stall only ends by its deadline).
STALL_DEADLINE = 1.0
#: Seconds past the deadline we tolerate for the error to surface (2-core CI, busy).
SLACK = 5.0

FAULTS = ["kill_before", "kill_mid", "kill_near_end", "close_before", "close_mid", "stall", "cancel"]


def _big_plan() -> TransferPlan:
    """SIZE bytes in PIECE-byte rows read in a permuted order: nothing coalesces, so the
    transfer lasts long enough to be hit mid-way."""
    n = SIZE // PIECE
    perm = np.random.default_rng(11).permutation(n)
    return make_plan({0: (0, perm * PIECE, 0, np.arange(n) * PIECE, PIECE)}, dst_blocks=DST_BLOCKS)


def _big_expected(seed: int) -> np.ndarray:
    n = SIZE // PIECE
    perm = np.random.default_rng(11).permutation(n)
    return pattern_bytes(seed, SIZE).reshape(n, PIECE)[perm].reshape(-1)


def _small_plan() -> TransferPlan:
    return make_plan({0: (0, 0, 0, 0, SMALL)}, dst_blocks={"attention.0": (0,)})


@contextlib.asynccontextmanager
async def _d_agent(kind: str, dst: np.ndarray) -> AsyncIterator[Agent]:
    async with Agent("d", transport=kind, transport_options=OPTIONS[kind], role="decode",
                     layout=StaticLayout("d", "conformance-model")) as d:
        await d.register("dst", dst)
        yield d


async def _healthy_transfer(d: Agent, peer: Peer, proc: PeerProcess, dst: np.ndarray, request_id: str) -> None:
    """The next transfer from a healthy peer: byte-exact, and P hears about it once."""
    dst[:SMALL] = 0
    await d.prepare(_small_plan(), [peer], request_id).execute(timeout=DEADLINE)
    assert np.array_equal(dst[:SMALL], pattern_bytes(2, SMALL))
    assert await proc.next_done(DEADLINE) == request_id


async def _until_written(dst: np.ndarray, fraction: float, done: Sequence[object]) -> None:
    """Return once the destination byte at ``fraction`` arrived (or the transfer ended)."""
    watch = min(SIZE - 64, int(SIZE * fraction))
    while not done and (dst[watch : watch + 64] == SENTINEL).all():
        await anyio.sleep(0.0005)


async def _run_fault(fault: str, d: Agent, victim: PeerProcess, peer: Peer, dst: np.ndarray) -> BaseException | None:
    """Inject ``fault`` into one execution from ``victim``; return what execute raised."""
    executable: ExecutablePlan = d.prepare(_big_plan(), [peer], f"victim-{fault}")
    outcome: list[BaseException | None] = []

    async def run() -> None:
        try:
            await executable.execute(timeout=STALL_DEADLINE if fault == "stall" else DEADLINE)
            outcome.append(None)
        except TransferError as exc:
            outcome.append(exc)

    if fault == "kill_before":
        victim.kill()
        await victim.process.wait()
    elif fault == "close_before":
        assert victim.process.stdin is not None
        await victim.process.stdin.aclose()  # P leaves its `async with Agent`: connections closed cleanly
        await victim.process.wait()
    if fault == "stall":
        os.kill(victim.process.pid, signal.SIGSTOP)  # alive, sockets open, never answers
        try:
            await run()
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
        return outcome[0]
    if fault == "cancel":
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await _until_written(dst, 0.25, outcome)
            tg.cancel_scope.cancel()
        assert not outcome, "execute finished although it was cancelled"
        assert executable.state == "failed"
        assert await victim.next_done(0.5) is None, "P was told a cancelled request is done"
        await executable.execute(timeout=DEADLINE)  # retrying the same request works
        assert np.array_equal(dst, _big_expected(1))
        assert await victim.next_done(DEADLINE) == f"victim-{fault}"
        return None
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        if fault in ("kill_mid", "kill_near_end", "close_mid"):
            await _until_written(dst, {"kill_mid": 0.5, "kill_near_end": 0.99, "close_mid": 0.25}[fault], outcome)
            if fault == "close_mid":
                assert victim.process.stdin is not None
                await victim.process.stdin.aclose()
            else:
                victim.kill()
    return outcome[0]


@pytest.mark.anyio
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", CROSS_PROCESS)
async def test_peer_fault(kind: str, fault: str) -> None:
    """One P fault: typed error in time, exact invalid blocks, nothing leaked, next transfer fine.

    ``kill_near_end`` and ``close_mid`` may legitimately succeed (every byte had left P
    before it died); success then has to be byte-exact — a failure is never reported
    received. Every other fault must fail.
    """
    dst = np.full(SIZE, SENTINEL, np.uint8)
    with anyio.fail_after(120):
        async with _d_agent(kind, dst) as d, PeerProcess.spawn(kind, OPTIONS[kind], name="healthy", size=SMALL,
                                                                seed=2) as healthy:
            healthy_peer = await d.connect(healthy.metadata)
            await _healthy_transfer(d, healthy_peer, healthy, dst, "warm-up")  # lazy connections, worker threads
            baseline: ResourceSnapshot = resource_snapshot()
            started = anyio.current_time()
            async with PeerProcess.spawn(kind, OPTIONS[kind], name="victim", size=SIZE, seed=1) as victim:
                peer = await d.connect(victim.metadata)
                started = anyio.current_time()
                error = await _run_fault(fault, d, victim, peer, dst)
                elapsed = anyio.current_time() - started
            if fault == "cancel":
                assert error is None
            elif error is None:
                assert fault in ("kill_near_end", "close_mid"), f"{fault}: the transfer succeeded"
                assert np.array_equal(dst, _big_expected(1)), "a transfer reported successful is not byte-exact"
            else:
                assert isinstance(error, TransferError), repr(error)
                assert isinstance(error, TransferTimeout) == (fault == "stall"), repr(error)
                assert error.request_id == f"victim-{fault}" and error.source_rank == 0
                assert error.invalid_blocks == DST_BLOCKS
                limit = (STALL_DEADLINE if fault == "stall" else DEADLINE) + SLACK
                assert elapsed < limit, f"{fault} took {elapsed:.1f}s to surface"
            await _healthy_transfer(d, healthy_peer, healthy, dst, "after-fault")
            after = await wait_settled(baseline, fds=4)
            assert not after.grew_beyond(baseline, fds=4, rss_bytes=1 << 62), after.grew_beyond(baseline, fds=4)

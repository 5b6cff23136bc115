"""Cross-process conformance checks: a real peer process that can be killed and restarted.

:class:`PeerProcess` spawns ``python -m hybridxfer.testing._peer_process`` with a
transport name and options (so any installed plugin works) and reads what it prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer._child import ChildLines, open_child
from hybridxfer.errors import IncompatibleLayoutsError, TransferError, TransportError
from hybridxfer.descriptors import Descriptors
from hybridxfer.plan import PlanStatistics, TransferPlan
from hybridxfer.testing._hybrid_check import check_full_hybrid_oracle
from hybridxfer.testing._checks import SENTINEL, ConformanceFailure, batch, expect_bytes, region_of
from hybridxfer.testing._write_checks import declines_writes
from hybridxfer.transport import PeerHandle, WritableTransport, writable
from hybridxfer.transport.registry import open_transport
from hybridxfer.testing._peer_process import StaticLayout, pattern_bytes

__all__ = ["PeerProcess", "SinkProcess", "make_plan"]

Int64Array = npt.NDArray[np.int64]


def make_plan(reads: Mapping[int, Sequence[object]], *, src_region_names: Sequence[str] = ("src",),
              dst_region_names: Sequence[str] = ("dst",), notify_ranks: Sequence[int] | None = None,
              dst_blocks: Mapping[str, tuple[int, ...]] | None = None, dst_rank: int = 0) -> TransferPlan:
    """A ``TransferPlan`` from hand-written columns: ``{rank: (src_region, src_offset,
    dst_region, dst_offset, length)}`` (scalars broadcast). For tests, not engines."""
    sources: dict[int, Descriptors] = {}
    for rank in sorted(reads):
        cols = [np.atleast_1d(np.asarray(c, dtype=np.int64)) for c in reads[rank]]
        n = max(len(c) for c in cols)
        sr, so, dr, do, ln = (np.broadcast_to(c, (n,)).copy() for c in cols)
        sources[rank] = Descriptors(sr, so, dr, do, ln, src_rank=np.full(n, rank, dtype=np.int64))
    descriptors = Descriptors.concat(list(sources.values()))
    stats = PlanStatistics(
        bytes=descriptors.total_bytes, bytes_by_kind={"raw": descriptors.total_bytes}, padding_bytes_skipped=0,
        descriptor_count=len(descriptors), descriptor_count_uncoalesced=len(descriptors),
        bytes_by_source={rank: s.total_bytes for rank, s in sources.items()},
        descriptors_by_source={rank: len(s) for rank, s in sources.items()},
    )
    return TransferPlan(
        src_tp=max(reads, default=0) + 1, dst_tp=1, dst_rank=dst_rank, descriptors=descriptors,
        src_region_names=tuple(src_region_names), dst_region_names=tuple(dst_region_names),
        notify_ranks=tuple(sorted(reads) if notify_ranks is None else notify_ranks),
        dst_blocks=dict(dst_blocks or {"kv": (0,)}), statistics=stats,
    )


@contextlib.asynccontextmanager
async def _metadata_child(argv: list[str], what: str, start_timeout: float) -> AsyncIterator[tuple[ChildLines, bytes]]:
    """Start a child agent process and wait for the ``META <hex>`` line it prints once its
    transport is listening; the child is killed on exit whatever happened."""
    async with open_child(argv, lambda status: ConformanceFailure(f"{what} process exited ({status})")) as child:
        with anyio.fail_after(start_timeout):
            line = await child.line()
        if not line.startswith("META "):
            raise ConformanceFailure(f"{what} process printed {line!r} instead of its metadata")
        yield child, bytes.fromhex(line[5:])


class _ChildAgent:
    """An agent in a child process: its output lines and the metadata it announced."""

    def __init__(self, child: ChildLines, metadata: bytes) -> None:
        self.child = child
        self.process = child.process
        self.metadata = metadata

    def kill(self) -> None:
        """SIGKILL: no cleanup, no FIN from user space — the crash engines see."""
        self.child.kill()


class PeerProcess(_ChildAgent):
    """A P agent in a child process serving ``pattern_bytes(seed, size)`` as region ``src``."""

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, transport: str, options: Mapping[str, object] | None = None, *, name: str = "peer",
                    size: int = 1 << 20, seed: int = 0, rank: int = 0, tp_size: int = 1,
                    model_digest: str = "conformance-model", start_timeout: float = 60.0,
                    ) -> AsyncIterator[PeerProcess]:
        """Start the peer and wait for its metadata; kill it on exit whatever happened."""
        argv = [sys.executable, "-m", "hybridxfer.testing._peer_process", "--transport", transport,
                "--options", json.dumps(dict(options or {})), "--name", name, "--size", str(size),
                "--seed", str(seed), "--rank", str(rank), "--tp-size", str(tp_size),
                "--model-digest", model_digest]
        async with _metadata_child(argv, "peer", start_timeout) as (child, metadata):
            yield cls(child, metadata)

    async def _line(self) -> str:
        return await self.child.line()

    async def next_done(self, timeout: float) -> str | None:
        """The next request ID the peer reported done, or ``None`` after ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            line = await self._line()
            if line.startswith("DONE "):
                return line.split()[1]
            raise ConformanceFailure(f"unexpected peer output {line!r}")
        return None


async def _agent(transport: str, options: Mapping[str, object], dst: npt.NDArray[np.uint8],
                 stack: contextlib.AsyncExitStack, model: str = "conformance-model") -> object:
    from hybridxfer.execute import Agent

    agent = await stack.enter_async_context(
        Agent("conf-d", transport=transport, transport_options=options, role="decode",
              layout=StaticLayout("conf-d-layout", model)))
    await agent.register("dst", dst)
    return agent


async def check_peer_killed(transport: str, options: Mapping[str, object], *, kill_at: float = 0.5,
                            size: int = 256 << 20, piece: int = 4096, timeout: float = 20.0) -> None:
    """P SIGKILLed when ``kill_at`` of the destination has arrived -> TransferError in time.

    ``kill_at=0`` kills before the read starts. Near 1.0 the bytes may all have left P
    already; then success is correct, but only with every byte exact.
    """
    dst = np.full(size, SENTINEL, np.uint8)
    n = size // piece
    async with contextlib.AsyncExitStack() as stack:
        agent = await _agent(transport, options, dst, stack)
        peer_proc = await stack.enter_async_context(PeerProcess.spawn(transport, options, size=size, seed=21))
        peer = await agent.connect(peer_proc.metadata)  # type: ignore[attr-defined]
        plan = make_plan({0: (0, np.arange(n) * piece, 0, np.arange(n) * piece, piece)})
        executable = agent.prepare(plan, [peer], "killed-request")  # type: ignore[attr-defined]
        if kill_at <= 0:
            peer_proc.kill()
            await peer_proc.process.wait()
        watch = max(0, min(size - 64, int(size * kill_at)))
        started = anyio.current_time()
        outcome: list[BaseException | None] = []

        async def run() -> None:
            try:
                await executable.execute(timeout=timeout)
                outcome.append(None)
            except TransferError as exc:
                outcome.append(exc)

        with anyio.fail_after(timeout + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while kill_at > 0 and not outcome and (dst[watch : watch + 64] == SENTINEL).all():
                    await anyio.sleep(0.0005)
                peer_proc.kill()
        elapsed = anyio.current_time() - started
    if elapsed > timeout + 5:
        raise ConformanceFailure(f"killed peer took {elapsed:.1f}s to surface (timeout {timeout}s)")
    error = outcome[0]
    if error is None:
        if kill_at < 0.9:
            raise ConformanceFailure(f"read succeeded although P was killed at {kill_at:.0%}")
        expect_bytes(dst, pattern_bytes(21, size), "a transfer reported successful")
        return
    if not isinstance(error, TransferError) or error.request_id != "killed-request" or not error.invalid_blocks:
        raise ConformanceFailure(f"expected TransferError naming the request and its blocks, got {error!r}")


async def check_reconnect_after_restart(transport: str, options: Mapping[str, object], size: int = 1 << 20) -> None:
    dst = np.zeros(size, np.uint8)
    async with contextlib.AsyncExitStack() as stack:
        agent = await _agent(transport, options, dst, stack)
        plan = make_plan({0: (0, 0, 0, 0, size)})
        for generation in range(2):
            async with PeerProcess.spawn(transport, options, size=size, seed=30 + generation) as proc:
                peer = await agent.connect(proc.metadata)  # type: ignore[attr-defined]
                await agent.prepare(plan, [peer], f"gen-{generation}").execute(timeout=20)  # type: ignore[attr-defined]
                expect_bytes(dst, pattern_bytes(30 + generation, size), f"read from peer generation {generation}")
                proc.kill()
                if generation == 0:
                    try:
                        await agent.prepare(plan, [peer], "after-kill").execute(timeout=20)  # type: ignore[attr-defined]
                    except TransferError:
                        pass
                    else:
                        raise ConformanceFailure("read from a killed peer succeeded")


async def check_notified_once_across_processes(transport: str, options: Mapping[str, object]) -> None:
    size = 64 << 10
    dst = np.zeros(size, np.uint8)
    async with contextlib.AsyncExitStack() as stack:
        agent = await _agent(transport, options, dst, stack)
        proc = await stack.enter_async_context(PeerProcess.spawn(transport, options, size=size, seed=40))
        peer = await agent.connect(proc.metadata)  # type: ignore[attr-defined]
        executable = agent.prepare(make_plan({0: (0, 0, 0, 0, size)}), [peer], "once")  # type: ignore[attr-defined]
        await executable.execute(timeout=20)
        expect_bytes(dst, pattern_bytes(40, size), "cross-process read")
        if await proc.next_done(20) != "once":
            raise ConformanceFailure("P never reported the request done")
        try:
            await executable.execute(timeout=20)
        except TransferError:
            pass
        else:
            raise ConformanceFailure("executing a completed request again must raise TransferError")
        if (again := await proc.next_done(0.3)) is not None:
            raise ConformanceFailure(f"P saw a second completion: {again}")


async def check_incompatible_peer_refused(transport: str, options: Mapping[str, object]) -> None:
    dst = np.zeros(16, np.uint8)
    async with contextlib.AsyncExitStack() as stack:
        agent = await _agent(transport, options, dst, stack, model="model-A")
        proc = await stack.enter_async_context(PeerProcess.spawn(transport, options, model_digest="model-B"))
        try:
            await agent.connect(proc.metadata)  # type: ignore[attr-defined]
        except IncompatibleLayoutsError:
            return
        raise ConformanceFailure("a peer serving another model was not refused")


async def check_peer_killed_before(transport: str, options: Mapping[str, object]) -> None:
    await check_peer_killed(transport, options, kill_at=0.0)


async def check_peer_killed_mid(transport: str, options: Mapping[str, object]) -> None:
    await check_peer_killed(transport, options, kill_at=0.5)


async def check_peer_killed_near_end(transport: str, options: Mapping[str, object]) -> None:
    await check_peer_killed(transport, options, kill_at=0.99)


class SinkProcess(_ChildAgent):
    """A write target in a child process (:mod:`hybridxfer.testing._sink_process`)."""

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, transport: str, options: Mapping[str, object] | None = None, *, size: int,
                    name: str = "sink", start_timeout: float = 60.0) -> AsyncIterator[SinkProcess]:
        """Start the sink and wait for its metadata; kill it on exit whatever happened."""
        argv = [sys.executable, "-m", "hybridxfer.testing._sink_process", "--transport", transport,
                "--options", json.dumps(dict(options or {})), "--name", name, "--size", str(size)]
        async with _metadata_child(argv, "sink", start_timeout) as (child, metadata):
            yield cls(child, metadata)

    async def digest(self, timeout: float = 20.0) -> str:
        """The sha256 of the sink region as the child sees it now."""
        assert self.process.stdin is not None
        with anyio.fail_after(timeout):
            await self.process.stdin.send(b"DIGEST\n")
            line = await self.child.line()
        if not line.startswith("DIGEST "):
            raise ConformanceFailure(f"sink process printed {line!r} instead of a digest")
        return line.split()[1]


def _sha(data: npt.NDArray[np.uint8]) -> str:
    return hashlib.sha256(data.tobytes()).hexdigest()


@contextlib.asynccontextmanager
async def _writer(transport: str, options: Mapping[str, object], src: npt.NDArray[np.uint8],
                  sink_size: int) -> AsyncIterator[tuple[WritableTransport, PeerHandle, SinkProcess] | None]:
    """Our transport with ``src`` registered, connected to a fresh sink process of
    ``sink_size`` bytes; ``None`` (no process started) for a transport without writes,
    once ``writable`` refused it as it must."""
    if declines_writes(open_transport(transport, name="conf-probe", **dict(options))):
        yield None
        return
    async with open_transport(transport, name="conf-writer", **dict(options)) as t:
        w = writable(t)
        await w.register([region_of("src", src)])
        async with SinkProcess.spawn(transport, options, size=sink_size) as sink:
            yield w, await w.connect(sink.metadata), sink


async def check_write_across_processes(transport: str, options: Mapping[str, object],
                                       size: int = 4 << 20, piece: int = 1024) -> None:
    """Rows written into a peer process land exactly (every byte of its region checked);
    once the peer is SIGKILLed, a write raises a transport error within its deadline."""
    src = np.random.default_rng(70).integers(0, 256, size, dtype=np.uint8)
    half, n = size // 2, size // 2 // piece
    perm = np.random.default_rng(71).permutation(n)
    rows = batch(0, np.concatenate([perm * piece, [half]]), 0,
                 np.concatenate([np.arange(n) * piece + 64, [half + 4096]]),
                 np.concatenate([np.full(n, piece), [half - 8192]]))
    expected = np.full(size, SENTINEL, np.uint8)
    for sr, so, dr, do, ln in rows.rows():
        expected[do:do + ln] = src[so:so + ln]
    async with _writer(transport, options, src, size) as opened:
        if opened is None:
            return
        w, peer, sink = opened
        if await sink.digest() != _sha(np.full(size, SENTINEL, np.uint8)):
            raise ConformanceFailure("the sink process did not start with its sentinel bytes")
        with anyio.fail_after(30):
            for part in rows.split(w.capabilities.max_descriptors_per_read):
                await w.write(peer, part)
        if await sink.digest() != _sha(expected):
            raise ConformanceFailure("bytes written into another process differ from what was written "
                                     "(or bytes outside the rows changed)")
        sink.kill()
        await sink.process.wait()
        await _expect_write_fails(w, peer, batch(0, 0, 0, 0, 4096), "a write to a SIGKILLed peer")


async def _expect_write_fails(w: WritableTransport, peer: PeerHandle, rows: Descriptors, what: str,
                              deadline: float = 20.0) -> None:
    with anyio.move_on_after(deadline) as scope:
        try:
            await w.write(peer, rows)
        except TransportError:
            return
        raise ConformanceFailure(f"{what} succeeded")
    if scope.cancelled_caught:
        raise ConformanceFailure(f"{what} did not fail within {deadline} s")


async def check_write_to_killed_peer(transport: str, options: Mapping[str, object], size: int = 64 << 20,
                                     piece: int = 4096) -> None:
    """The peer SIGKILLed while a large write is under way: that write either completed
    before the kill or raises a transport error, within its deadline; the next one raises."""
    src = np.random.default_rng(72).integers(0, 256, size, dtype=np.uint8)
    n = size // piece
    perm = np.random.default_rng(73).permutation(n)
    rows = batch(0, perm * piece, 0, np.arange(n) * piece, piece)
    async with _writer(transport, options, src, size) as opened:
        if opened is None:
            return
        w, peer, sink = opened
        await w.write(peer, batch(0, 0, 0, 0, piece))  # connected and warm
        outcome: list[BaseException | None] = []

        async def run() -> None:
            try:
                for part in rows.split(w.capabilities.max_descriptors_per_read):
                    await w.write(peer, part)
                outcome.append(None)
            except TransportError as exc:
                outcome.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await anyio.sleep(0.005)
                sink.kill()
            await sink.process.wait()
        await _expect_write_fails(w, peer, batch(0, 0, 0, 0, piece), "a write after the peer was killed")


CROSS_PROCESS_CHECKS: dict[str, Callable[[str, Mapping[str, object]], Awaitable[None]]] = {
    "peer_killed_0": check_peer_killed_before,
    "peer_killed_50": check_peer_killed_mid,
    "peer_killed_99": check_peer_killed_near_end,
    "reconnect_after_restart": check_reconnect_after_restart,
    "notified_once_across_processes": check_notified_once_across_processes,
    "incompatible_peer_refused": check_incompatible_peer_refused,
    "full_hybrid_oracle": check_full_hybrid_oracle,
    "write_across_processes": check_write_across_processes,
    "write_to_killed_peer": check_write_to_killed_peer,
}

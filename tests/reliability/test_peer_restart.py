"""A P that restarts on the same address is another peer: typed error, never its memory.

Why processes: a restarted peer is a killed process and a new one bound to the same
address (TCP and UCXX: the same port; NIXL: the same agent name), which is exactly what
leaves a reader with stale metadata. Each test kills P after D handshook, starts a new P
there, and checks that D (1) fails with :class:`PeerRestartedError` naming both
incarnations, (2) moved no byte into its memory while failing, and (3) with
``retry_on_restart`` handshakes again and reads the *new* P's bytes exactly.
"""

from __future__ import annotations

import socket

import anyio
import numpy as np
import pytest

from hybridxfer.engine import DecodeConnector, RequestFailed
from hybridxfer.errors import PeerRestartedError, TransferError
from hybridxfer.execute import Agent, AgentInfo
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches
from hybridxfer.testing._cross_process import PeerProcess, make_plan
from hybridxfer.testing._hybrid_check import HYBRID_LAYOUT, spawn_hybrid_rank
from hybridxfer.testing._peer_process import StaticLayout, pattern_bytes
from tests.reliability._support import CROSS_PROCESS, OPTIONS

TOKENS = 40
SIZE = 1 << 20
DEADLINE = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fixed_address(kind: str) -> dict[str, object]:
    """Options that pin P's address, so the restarted P is found where the old one was."""
    options = dict(OPTIONS[kind])
    if kind in ("tcp", "ucxx"):
        options["port"] = _free_port()
    return options  # nixl: the agent name is the address, and the peer processes keep theirs


def _restart_in_chain(error: BaseException) -> PeerRestartedError:
    seen: list[BaseException] = []
    cur: BaseException | None = error
    while cur is not None and cur not in seen:
        if isinstance(cur, PeerRestartedError):
            return cur
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    raise AssertionError(f"no PeerRestartedError behind {error!r}")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CROSS_PROCESS)
async def test_agent_refuses_a_restarted_peer_and_reads_the_new_one(kind: str) -> None:
    """Agent level: a plan bound to the old P fails, nothing lands; a new handshake reads P2's bytes."""
    options = _fixed_address(kind)
    dst = np.zeros(SIZE, np.uint8)
    with anyio.fail_after(120):
        async with Agent("d", transport=kind, transport_options=OPTIONS[kind], role="decode",
                         layout=StaticLayout("d", "conformance-model")) as d:
            await d.register("dst", dst)
            plan = make_plan({0: (0, 0, 0, 0, SIZE)}, dst_blocks={"attention.0": (0,)})
            async with PeerProcess.spawn(kind, options, name="victim", size=SIZE, seed=1) as old:
                peer = await d.connect(old.metadata)
                old.kill()
                await old.process.wait()
            async with PeerProcess.spawn(kind, options, name="victim", size=SIZE, seed=2) as new:
                fresh = AgentInfo.from_bytes(new.metadata)
                assert fresh.incarnation and fresh.incarnation != peer.incarnation
                with pytest.raises(TransferError) as caught:
                    await d.prepare(plan, [peer], "stale").execute(timeout=DEADLINE)
                assert caught.value.invalid_blocks == {"attention.0": (0,)}
                if kind == "tcp":  # the transport itself sees the new incarnation on reconnecting
                    restart = _restart_in_chain(caught.value)
                    assert (restart.old_incarnation, restart.new_incarnation) == (peer.incarnation,
                                                                                  fresh.incarnation)
                assert not dst.any(), "bytes landed from a plan bound to a dead incarnation"
                with pytest.raises(PeerRestartedError) as named:
                    d.check_incarnation(peer, new.metadata)
                assert peer.incarnation in str(named.value) and fresh.incarnation in str(named.value)
                again = await d.connect(new.metadata)
                assert again.incarnation == fresh.incarnation
                d.check_incarnation(again, new.metadata)  # the same incarnation passes
                await d.prepare(plan, [again], "fresh").execute(timeout=DEADLINE)
                assert np.array_equal(dst, pattern_bytes(2, SIZE)), "not the new P's bytes"
                assert not np.array_equal(dst, pattern_bytes(1, SIZE))
                assert await new.next_done(DEADLINE) == "fresh"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CROSS_PROCESS)
async def test_pull_names_both_incarnations_and_retries_once(kind: str) -> None:
    """Engine level, real hybrid layout: ``restarted`` without retry; with it, byte-exact from P2.

    The old P is SIGKILLed before the retry, so every byte the retry leaves in D's memory
    came from the new one; the oracle checks all of them, untouched bytes included.
    """
    options = _fixed_address(kind)
    layout = loads_layout(HYBRID_LAYOUT, source="<conformance-hybrid>")
    dst = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, TOKENS))
    memory = destination_memory(dst)
    blank = {name: arr.copy() for name, arr in memory.items()}
    current: list[bytes] = []

    async def refresh() -> list[bytes]:
        return list(current)

    with anyio.fail_after(180):
        async with DecodeConnector(dst, name="d", transport=kind, transport_options=OPTIONS[kind]) as d:
            await d.register_caches(memory)
            async with spawn_hybrid_rank(HYBRID_LAYOUT, tp=1, rank=0, tokens=TOKENS, transport=kind,
                                         options=options) as old:
                current[:] = [old.metadata]
                await d.connect("prefill", [old.metadata], refresh=refresh)
                old_incarnation = AgentInfo.from_bytes(old.metadata).incarnation
                old.process.kill()
                await old.process.wait()
            async with spawn_hybrid_rank(HYBRID_LAYOUT, tp=1, rank=0, tokens=TOKENS, transport=kind,
                                         options=options) as new:
                current[:] = [new.metadata]
                new_incarnation = AgentInfo.from_bytes(new.metadata).incarnation
                src = d.agent.source_layouts(d.peers("prefill"))[0]
                src_blocks = contiguous_block_tables(src, TOKENS)
                dst_blocks = contiguous_block_tables(dst, TOKENS)
                with pytest.raises(RequestFailed) as caught:
                    await d.pull("r1", engine="prefill", src_blocks=src_blocks, dst_blocks=dst_blocks,
                                 num_tokens=TOKENS, timeout=DEADLINE)
                failure = caught.value.failure
                assert failure.reason == "restarted", failure
                assert old_incarnation in failure.message and new_incarnation in failure.message
                restart = _restart_in_chain(caught.value)
                assert (restart.old_incarnation, restart.new_incarnation) == (old_incarnation, new_incarnation)
                assert not mismatches(memory, blank), "bytes landed from a plan bound to a dead incarnation"
                assert [f.request_id for f in d.failed_requests()] == ["r1"]

                result = await d.pull("r1", engine="prefill", src_blocks=src_blocks, dst_blocks=dst_blocks,
                                      num_tokens=TOKENS, timeout=DEADLINE, retry_on_restart=True)
                assert result.notified_ranks == (0,)
                assert d.peers("prefill")[0].incarnation == new_incarnation
                chunk = compile_plan(d.agent.source_layouts(d.peers("prefill")), dst).chunk_tokens
                assert mismatches(memory, expected_destination(dst, TOKENS, chunk)) == []
                assert d.failed_requests() == ()
                with anyio.fail_after(DEADLINE):
                    assert (await new.line()).startswith("DONE r1 ")


"""The failure policy, with a real P process killed mid-transfer over TCP.

Why the kill happens in the progress callback: it makes the fault land part-way on every
run (no timing), after some reads returned and before the rest. Under ``recompute`` the
reported ``intact_tokens`` is then checked against D's memory with the oracle alone: every
byte of those leading tokens must be exactly what a request of that many tokens writes —
and, as a negative control, the same check on the whole request must fail. ``fail`` keeps
the old contract: no count, every destination block invalid.
"""

from __future__ import annotations

import os
import signal

import anyio
import numpy as np
import pytest

from hybridxfer.engine import DecodeConnector, FailurePolicy, RequestFailed
from hybridxfer.execute import TransferProgress
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination
from hybridxfer.testing._hybrid_check import HYBRID_LAYOUT, spawn_hybrid_rank
from tests.reliability._support import OPTIONS, U8, Memory

ATTENTION_ONLY = """
format = "hybridxfer.layout/1"
[model]
id = "recompute-attention"
pattern = "****"
legend = { "*" = "attention" }
[specs.attention]
kind = "attention"
num_kv_heads = 2
head_dim = 64
dtype = "bfloat16"
"""
TOKENS = 16384
#: Reads are recorded (and progress reported) in pieces of this many bytes.
STEP = 64 << 10
DEADLINE = 30.0


def _first_tokens_exact(memory: Memory, blank: Memory, want: Memory) -> list[str]:
    """Where ``want`` (the oracle's image of a request of the first K tokens) differs from
    the blank background, D's memory must hold it; elsewhere the right value *is* the
    background, so nothing else needs checking."""
    out = []
    for name, expected in want.items():
        footprint = expected != blank[name]
        got: U8 = memory[name]
        bad = np.flatnonzero(footprint & (got != expected))
        if bad.size:
            out.append(f"{name}: {bad.size} bytes of the first tokens differ, first at {int(bad[0])}")
    return out


async def _pull_and_kill(layout_text: str, tokens: int, policy: FailurePolicy,
                         kill_at: float) -> tuple[RequestFailed, Memory, Memory, int]:
    """Pull one request from a P process that is SIGKILLed once ``kill_at`` of its bytes landed."""
    layout = loads_layout(layout_text, source="<failure-policy>")
    dst = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, tokens))
    memory = destination_memory(dst)
    blank = {name: arr.copy() for name, arr in memory.items()}
    with anyio.fail_after(120):
        async with DecodeConnector(dst, name="d", transport="tcp", transport_options=OPTIONS["tcp"]) as d:
            await d.register_caches(memory)
            async with spawn_hybrid_rank(layout_text, tp=1, rank=0, tokens=tokens, transport="tcp",
                                         options=OPTIONS["tcp"]) as p:
                await d.connect("prefill", [p.metadata])
                src = d.agent.source_layouts(d.peers("prefill"))
                pid = p.process.pid

                def progress(event: TransferProgress) -> None:
                    nonlocal pid
                    if pid and event.fraction >= kill_at:
                        os.kill(pid, signal.SIGKILL)  # synchronous: no later read is answered
                        pid = 0

                with pytest.raises(RequestFailed) as caught:
                    await d.pull("r", engine="prefill", src_blocks=contiguous_block_tables(src[0], tokens),
                                 dst_blocks=contiguous_block_tables(dst, tokens), num_tokens=tokens,
                                 timeout=DEADLINE, on_progress=progress, progress_step_bytes=STEP,
                                 on_failure=policy)
                assert pid == 0, "P was never killed: the transfer did not get that far"
                chunk = compile_plan(src, dst).chunk_tokens
    return caught.value, memory, blank, chunk


@pytest.mark.anyio
@pytest.mark.parametrize("kill_at", [0.3, 0.85])
async def test_recompute_reports_exactly_the_intact_leading_tokens(kill_at: float) -> None:
    """Exact (every byte of the reported tokens is right) and tight (a piece later is not).

    The plan reads layer by layer, so at 30% the later layers hold nothing yet and no
    token is intact; at 85% every layer but the last is complete and the last is part-way.
    """
    error, memory, blank, chunk = await _pull_and_kill(ATTENTION_ONLY, TOKENS, "recompute", kill_at)
    failure = error.failure
    assert failure.reason == "transfer"
    intact = failure.intact_tokens
    assert intact is not None
    if kill_at > 0.75:
        assert 0 < intact < TOKENS, intact
    else:
        assert intact == 0
    layout = loads_layout(ATTENTION_ONLY, source="<failure-policy>")
    dst = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, TOKENS))
    assert intact % dst.logical_block_tokens == 0
    assert _first_tokens_exact(memory, blank, expected_destination(dst, intact, chunk)) == []
    # tight: one recorded piece (STEP bytes of one layer) further, D's memory is *not* exact —
    # this is also the negative control showing the check can fail
    beyond = intact + (STEP // dst.region_page_bytes[0] + 1) * dst.logical_block_tokens
    assert _first_tokens_exact(memory, blank, expected_destination(dst, beyond, chunk)) != []
    # and the whole request's blocks are still reported invalid: the engine decides what to keep
    assert failure.invalid_blocks == {"attention.0": tuple(contiguous_block_tables(dst, TOKENS)["attention.0"])}


@pytest.mark.anyio
async def test_fail_policy_keeps_todays_behaviour() -> None:
    error, _, _, _ = await _pull_and_kill(ATTENTION_ONLY, TOKENS, "fail", 0.5)
    failure = error.failure
    assert failure.reason == "transfer" and failure.intact_tokens is None
    layout = loads_layout(ATTENTION_ONLY, source="<failure-policy>")
    dst = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, TOKENS))
    assert failure.invalid_blocks == {"attention.0": tuple(contiguous_block_tables(dst, TOKENS)["attention.0"])}
    assert error.invalid_blocks == dict(failure.invalid_blocks)


@pytest.mark.anyio
async def test_recompute_on_a_hybrid_model_keeps_nothing_when_state_is_incomplete() -> None:
    """SSM state is the state after the last token: no partial recompute can resume from it."""
    tokens = 2048
    error, memory, blank, chunk = await _pull_and_kill(HYBRID_LAYOUT, tokens, "recompute", 0.5)
    assert error.failure.reason == "transfer"
    assert error.failure.intact_tokens == 0
    layout = loads_layout(HYBRID_LAYOUT, source="<failure-policy>")
    dst = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, tokens))
    assert _first_tokens_exact(memory, blank, expected_destination(dst, tokens, chunk)) != []

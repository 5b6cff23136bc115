"""``on_failure="recompute"`` in process, where the failing read is chosen exactly.

Why a second test beside the process-kill one (tests/reliability/test_failure_policy.py):
here the fault lands on a known read, so the intact count has one right answer, and a read
that wrote half its rows before failing shows that bytes of a failed read are never
trusted, even when they happen to be right.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridxfer.engine import DecodeConnector, FailurePolicy, PrefillConnector, RequestFailed
from hybridxfer.layout import loads_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, source_memory
from hybridxfer.testing.faults import FaultInjectingTransport
from hybridxfer.transport.registry import open_transport

LAYOUT = loads_layout("""
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
""", source="<recompute>")
TOKENS = 64  # 4 blocks of 16 tokens per layer; one block of one layer is 8 KiB
STEP = 16 << 10  # reads recorded two blocks at a time: 8 reads, two per layer, layer by layer


def _exact(memory: dict[str, np.ndarray], blank: dict[str, np.ndarray], tokens: int, chunk: int) -> bool:
    dst = LAYOUT.for_rank(1, 0, num_blocks=blocks_for(LAYOUT, 1, TOKENS))
    want = expected_destination(dst, tokens, chunk)
    return all(np.array_equal(memory[n][want[n] != blank[n]], want[n][want[n] != blank[n]]) for n in want)


async def _pull(fault: dict[str, int], policy: FailurePolicy,
                num_tokens: int | None) -> tuple[RequestFailed, dict[str, np.ndarray], dict[str, np.ndarray], int]:
    src = LAYOUT.for_rank(1, 0, num_blocks=blocks_for(LAYOUT, 1, TOKENS))
    dst = LAYOUT.for_rank(1, 0, num_blocks=blocks_for(LAYOUT, 1, TOKENS))
    memory = destination_memory(dst)
    blank = {n: a.copy() for n, a in memory.items()}
    faulty = FaultInjectingTransport(open_transport("loopback", name="d"), **fault)
    async with PrefillConnector(src, name="p", transport="loopback") as p, \
            DecodeConnector(dst, name="d", transport=faulty, coalesce=False) as d:
        await p.register_caches(source_memory(src, TOKENS))
        await d.register_caches(memory)
        await d.connect("P", [p.metadata()])
        with pytest.raises(RequestFailed) as caught:
            await d.pull("r", engine="P", src_blocks=contiguous_block_tables(src, TOKENS),
                         dst_blocks=contiguous_block_tables(dst, TOKENS), num_tokens=num_tokens,
                         progress_step_bytes=STEP, on_failure=policy)
        chunk = compile_plan([src], dst).chunk_tokens
    assert faulty.reads == next(iter(fault.values())), faulty.reads  # the faulty read was the last one
    return caught.value, memory, blank, chunk


@pytest.mark.anyio
@pytest.mark.parametrize("num_tokens", [TOKENS, None])
async def test_failed_last_read_keeps_the_first_two_blocks(num_tokens: int | None) -> None:
    error, memory, blank, chunk = await _pull({"fail_read": 8}, "recompute", num_tokens)
    assert error.failure.reason == "transfer" and error.failure.intact_tokens == 32
    assert _exact(memory, blank, 32, chunk) and not _exact(memory, blank, 48, chunk)


@pytest.mark.anyio
async def test_bytes_of_a_broken_read_are_never_counted() -> None:
    """The last read writes block 2 of the last layer, then fails: those bytes are right in
    memory, yet the count stays at 32 tokens — nothing a failed read did is trusted."""
    error, memory, blank, chunk = await _pull({"break_read": 8}, "recompute", TOKENS)
    assert error.failure.intact_tokens == 32
    assert _exact(memory, blank, 48, chunk) and not _exact(memory, blank, TOKENS, chunk)


@pytest.mark.anyio
async def test_first_read_failing_keeps_nothing_and_fail_reports_no_count() -> None:
    error, _, _, _ = await _pull({"fail_read": 1}, "recompute", TOKENS)
    assert error.failure.intact_tokens == 0
    # ``fail`` records nothing (and, with no progress callback, does not cut reads either)
    error, _, _, _ = await _pull({"fail_read": 1}, "fail", TOKENS)
    assert error.failure.intact_tokens is None and error.failure.reason == "transfer"

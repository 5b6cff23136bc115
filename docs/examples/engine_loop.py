"""A toy disaggregated engine: two prefill engines (TP 2 each), one decode rank (TP 1).

Two requests are in flight at once. Prefill engine "prefill-b" crashes after the
handshake, so its request fails: the decode connector raises ``RequestFailed`` in the
task that pulled it and lists it in ``failed_requests()``, and the scheduler recomputes
it instead of decoding from garbage. The other request lands byte for byte, and both
ranks of "prefill-a" learn they may free its blocks.

Run it: ``python docs/examples/engine_loop.py`` (the tests run it too).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import anyio.abc

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.layout import RankLayout, load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import (
    blocks_for,
    destination_memory,
    expected_destination,
    mismatches,
    source_memory,
)

LAYOUT = load_layout(Path(__file__).with_name("toy_hybrid.toml"))
TOKENS = 100          # prompt tokens per request
P_TP, D_TP = 2, 1     # heterogeneous TP: D gathers each request from two P ranks
TRANSPORT = "loopback"  # "tcp" works the same across processes and hosts


def shifted(table: dict[str, list[int]], by: int) -> dict[str, list[int]]:
    """A second request's blocks: the same table moved up by ``by`` blocks.

    Pooled groups share block IDs (block 5 of ``attention.0`` and of ``mamba.0`` are
    the same bytes), so the shift is the request's blocks over *all* groups.
    """
    return {g: [b + by for b in ids] for g, ids in table.items()}


async def prefill_engine(engine: str, stop: anyio.Event, stopped: anyio.Event, *,
                         task_status: anyio.abc.TaskStatus[list[PrefillConnector]] = anyio.TASK_STATUS_IGNORED,
                         ) -> None:
    """One prefill engine, in its own task: P_TP ranks, each holding one finished prefill.

    Like every agent, a connector is closed by the task that opened it, so an engine
    that may go away runs in a task of its own; here it stops when ``stop`` is set.
    """
    async with contextlib.AsyncExitStack() as stack:
        ranks = []
        for rank in range(P_TP):
            layout = LAYOUT.for_rank(P_TP, rank, num_blocks=blocks_for(LAYOUT, P_TP, TOKENS))
            p = await stack.enter_async_context(
                PrefillConnector(layout, name=f"{engine}-r{rank}", transport=TRANSPORT, decode_tp=D_TP))
            await p.register_caches(source_memory(layout, TOKENS))  # the "model" ran prefill here
            ranks.append(p)
        task_status.started(ranks)
        await stop.wait()
    stopped.set()


async def main() -> dict[str, str]:
    outcome: dict[str, str] = {}
    stop_a, stop_b, a_stopped, b_stopped = anyio.Event(), anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as engines:
        prefill_a = await engines.start(prefill_engine, "prefill-a", stop_a, a_stopped)
        prefill_b = await engines.start(prefill_engine, "prefill-b", stop_b, b_stopped)

        # The decode rank holds room for two requests.
        d_layout: RankLayout = LAYOUT.for_rank(D_TP, 0, num_blocks=blocks_for(LAYOUT, D_TP, TOKENS, requests=2))
        d_memory = destination_memory(d_layout)
        async with DecodeConnector(d_layout, name="decode-r0", transport=TRANSPORT) as decode:
            await decode.register_caches(d_memory)
            await decode.connect("prefill-a", [p.metadata() for p in prefill_a])
            await decode.connect("prefill-b", [p.metadata() for p in prefill_b])

            stop_b.set()  # prefill-b dies after the handshake, before the transfer
            await b_stopped.wait()

            # The scheduler's view of the two requests: where P holds them, where D put them.
            p_tables = contiguous_block_tables(prefill_a[0].layout, TOKENS)
            first = contiguous_block_tables(d_layout, TOKENS)
            second = shifted(first, sum(len(ids) for ids in first.values()))
            requests = {"req-1": ("prefill-a", first), "req-2": ("prefill-b", second)}

            async def pull(request_id: str) -> None:
                engine, d_tables = requests[request_id]
                try:
                    result = await decode.pull(request_id, engine=engine, src_blocks=p_tables,
                                               dst_blocks=d_tables, num_tokens=TOKENS, timeout=10)
                except RequestFailed as exc:
                    print(f"{request_id}: FAILED ({exc.failure.reason} from P rank {exc.source_rank}); invalid blocks {dict(exc.invalid_blocks)}")
                    return
                print(f"{request_id}: received {result.bytes} bytes in {result.descriptors} descriptors "
                      f"from P ranks {result.source_ranks}")
                outcome[request_id] = "received"

            async with anyio.create_task_group() as tg:  # both requests in flight at once
                for request_id in requests:
                    tg.start_soon(pull, request_id)

            # One scheduler step: failed requests are recomputed, never decoded from bad state.
            for failed in decode.failed_requests():
                print(f"scheduler: recompute {failed.request_id} locally ({failed.engine}: {failed.reason})")
                outcome[failed.request_id] = f"recompute ({failed.reason})"

            # Both ranks of prefill-a learn that req-1 was read, and free its blocks.
            for p in prefill_a:
                done = await p.wait_request_finished("req-1", timeout=10)
                print(f"{p.name}: free blocks of {done.request_id} (read by {', '.join(done.readers)})")

            # What a test checks: req-1's blocks hold exactly P's state; req-2's blocks
            # (never written) and every other byte are untouched.
            chunk = compile_plan([p.layout for p in prefill_a], d_layout).chunk_tokens
            assert not mismatches(d_memory, expected_destination(d_layout, TOKENS, chunk)), "bytes differ"
            print("verified: every byte of decode-r0 is as expected")
        stop_a.set()
    return outcome


if __name__ == "__main__":
    print(anyio.run(main))

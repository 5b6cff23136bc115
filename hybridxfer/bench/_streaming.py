"""``hybridxfer bench --streaming``: bulk vs layer-streamed transfer under a simulated prefill.

Why this shape: streaming is worth its complexity only if D holds every byte sooner after
prefill *starts* (time to decode) and sooner after it *ends* (the tail). Each round, per
mode, D sets up the request, tells every P rank to run the simulated prefill
(:mod:`hybridxfer.bench._prefill`) and records when every byte has landed, against P's own
start/end stamps (``time.monotonic``, one clock per machine):

- ``bulk``: D prepares the whole plan, waits until P reports the prefill ended, then
  ``execute()`` — today's default path.
- ``pull-stream`` / ``push-stream``: D starts ``Agent.plan_stream(mode="pull"|"push")``
  before the prefill; P calls ``Agent.mark_ready`` as each cache layer's mixer ends.

Modes run interleaved within each round (same load); the first round is a discarded warm-up.
P processes are the ones of the transfer benchmark (:mod:`hybridxfer.bench._e2e`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from hybridxfer.bench._e2e import Group, PeerProcess, spawn_peers
from hybridxfer.bench._placement import HOST, Placement, Region
from hybridxfer.bench._prefill import DEFAULT_FLOPS, prefill_steps
from hybridxfer.bench._results import spread
from hybridxfer.bench._stream_results import StreamCaseResult, StreamMode
from hybridxfer.execute import Agent, Peer
from hybridxfer.layout import Layout, RankLayout, load_layout
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables, stream_schedule
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches

__all__ = ["MODES", "StreamGroup", "check_destination", "run_stream_group"]

MODES: tuple[StreamMode, ...] = ("bulk", "pull-stream", "push-stream")
_TIMEOUT = 300.0


@attrs.frozen
class StreamGroup:
    """Streaming cases sharing one set of P processes."""

    group: Group  # transport, layout, P TP, (dst_tp, tokens) cases, repeats, verify, options
    modes: tuple[StreamMode, ...] = MODES
    flops_per_s: float = DEFAULT_FLOPS
    layer_ms: float | None = None


async def _prefilled(procs: Sequence[PeerProcess]) -> tuple[float, float]:
    stamps = [[float(v) for v in (await p.line("PREFILLED ", timeout=_TIMEOUT))[0].split()] for p in procs]
    return min(s[0] for s in stamps), max(s[1] for s in stamps)


async def _one_round(mode: StreamMode, agent: Agent, peers: list[Peer], procs: Sequence[PeerProcess],
                     src_layouts: tuple[RankLayout, ...], dst: RankLayout, tokens: int, steps: Path,
                     ) -> tuple[float, float, float, float]:
    """(prefill seconds, tail, time to decode, transfer seconds) of one request."""
    sb, db = contiguous_block_tables(src_layouts[0], tokens), contiguous_block_tables(dst, tokens)
    rid = f"stream-{mode}-{time.monotonic_ns()}"
    if mode == "bulk":
        plan = compile_plan(src_layouts, dst).bind(sb, db, num_tokens=tokens)
        assert isinstance(plan, TransferPlan)
        executable = agent.prepare(plan, peers, rid)
        for p in procs:
            await p.send(f"PREFILL {rid} {tokens} {steps} 0")
        start, end = await _prefilled(procs)
        h0 = time.monotonic()
        await executable.execute(timeout=_TIMEOUT)
        done = time.monotonic()
        return end - start, done - end, done - start, done - h0
    stream = agent.plan_stream(peers, request_id=rid, src_blocks=sb, dst_blocks=db, num_tokens=tokens,
                               mode="pull" if mode == "pull-stream" else "push", timeout=_TIMEOUT)
    h0 = time.monotonic()
    for p in procs:
        await p.send(f"PREFILL {rid} {tokens} {steps} 1")
    await stream.wait(timeout=_TIMEOUT)
    done = time.monotonic()
    start, end = await _prefilled(procs)
    return end - start, done - end, done - start, done - h0


def _reset(memory: list[Region], dst: RankLayout, placement: Placement = HOST) -> None:
    fresh = destination_memory(dst)
    placement.load(memory, [fresh[name] for name in dst.region_names])


def check_destination(memory: list[Region], dst: RankLayout, tokens: int, chunk: int, what: str,
                      placement: Placement = HOST) -> None:
    """Every byte of D (untouched bytes included) against the oracle; RuntimeError naming the first mismatches."""
    got = dict(zip(dst.region_names, placement.to_host(memory), strict=True))
    diff = mismatches(got, expected_destination(dst, tokens, chunk))
    if diff:
        raise RuntimeError(f"{what}: " + "; ".join(diff))


async def _case(sg: StreamGroup, layout: Layout, agent: Agent, peers: list[Peer], procs: Sequence[PeerProcess],
                memory: list[Region], dst: RankLayout, dst_tp: int, tokens: int, tmp: Path,
                verify: bool) -> list[StreamCaseResult]:
    g = sg.group
    src_layouts = agent.source_layouts(peers)
    # TP ranks split each layer's FLOPs: the P group computes at src_tp x the per-rank rate
    steps = prefill_steps(layout, tokens, flops_per_s=sg.flops_per_s * g.src_tp, layer_ms=sg.layer_ms)
    stepsfile = tmp / f"steps-{tokens}.json"
    stepsfile.write_text(json.dumps([[s.seconds, s.ready] for s in steps]))
    template = compile_plan(src_layouts, dst)
    schedule = stream_schedule(template, contiguous_block_tables(src_layouts[0], tokens),
                               contiguous_block_tables(dst, tokens), num_tokens=tokens)
    nbytes = schedule.plan.statistics.bytes
    last_group_bytes = schedule.group_rows(schedule.groups[-1].name).total_bytes  # what the last readiness frees
    times: dict[StreamMode, list[tuple[float, float, float, float]]] = {m: [] for m in sg.modes}
    verified: dict[StreamMode, bool] = {m: False for m in sg.modes}
    for i in range(g.repeats + 1):
        for mode in sg.modes:
            check = verify and i == g.repeats
            if check:
                _reset(memory, dst, g.memory)
            got = await _one_round(mode, agent, peers, procs, src_layouts, dst, tokens, stepsfile)
            if check:
                check_destination(memory, dst, tokens, template.chunk_tokens,
                                  f"{g.transport} {mode} P{g.src_tp}->D{dst_tp} {tokens} tokens", g.memory)
                verified[mode] = True
            if i:
                times[mode].append(got)
    bulk = times.get("bulk") or next(iter(times.values()))
    bulk_ttd = spread([t[2] for t in bulk]).median
    bulk_transfer = spread([t[3] for t in bulk])
    return [StreamCaseResult(
        transport=g.transport, layout=layout.model, src_tp=g.src_tp, dst_tp=dst_tp, tokens=tokens, bytes=nbytes,
        mode=mode, prefill=spread([t[0] for t in ts]), tail=spread([t[1] for t in ts]),
        ttd=spread([t[2] for t in ts]), bulk_transfer=bulk_transfer,
        last_group_bytes=last_group_bytes, bulk_ttd_s=bulk_ttd, verified=verified[mode])
        for mode, ts in times.items()]


async def run_stream_group(sg: StreamGroup,
                           report: Callable[[StreamCaseResult], None] | None = None) -> list[StreamCaseResult]:
    """Run every (dst_tp, tokens) case of ``sg`` in every mode; ``report`` is called per result."""
    g = sg.group
    layout = load_layout(g.layout_path)
    tmax = max(t for _, t in g.cases)
    results: list[StreamCaseResult] = []
    with tempfile.TemporaryDirectory(prefix="hx-bench-stream-") as tmpdir:
        async with spawn_peers(g, [blocks_for(layout, g.src_tp, tmax, rank=r) for r in range(g.src_tp)], tmax) as procs:
            for dst_tp in sorted({d for d, _ in g.cases}):
                dst = layout.for_rank(dst_tp, 0, num_blocks=blocks_for(layout, dst_tp, tmax))
                memory = g.memory.allocate(dst.region_sizes)
                async with Agent("bench-stream-d0", transport=g.transport, transport_options=dict(g.options),
                                 role="decode", rank=0, tp_size=dst_tp, layout=dst) as agent:
                    for name, m in zip(dst.region_names, memory, strict=True):
                        await agent.register(name, m)
                    peers = [await agent.connect(p.meta) for p in procs]
                    for d, tokens in g.cases:
                        if d != dst_tp:
                            continue
                        for result in await _case(sg, layout, agent, peers, procs, memory, dst, dst_tp, tokens,
                                                  Path(tmpdir), g.verify and tokens == tmax):
                            results.append(result)
                            if report is not None:
                                report(result)
    return results

"""End-to-end cases: P processes, one D agent, hybridxfer and its raw ceiling interleaved.

Why one *group* per (transport, layout, P TP): P processes are expensive to start and to
fill, so they are started once with room for the largest request and every D TP, request
size and the concurrent-requests case reuse them. Within a case each repeat runs, back to
back, the raw ceiling, a numpy memcpy of the same bytes, and hybridxfer (bind + prepare +
``await execute()``), so all three see the same machine load; the first round is a
discarded warm-up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.bench import _raw
from hybridxfer.bench._placement import HOST, Placement, Region
from hybridxfer.bench._results import CaseResult, spread
from hybridxfer.bench._vllm import VllmDescriptorBaseline, uncoalesced_reads
from hybridxfer.execute import Agent, AgentInfo, Peer
from hybridxfer.layout import RankLayout, load_layout
from hybridxfer.plan import Descriptors, TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches

__all__ = ["Group", "PeerProcess", "duplicate_bytes", "run_group", "spawn_peers"]

U8 = npt.NDArray[np.uint8]
_TAG = 0x5EED00


@attrs.frozen
class Group:
    """Cases sharing one set of P processes."""

    transport: str
    layout_path: Path
    src_tp: int
    cases: tuple[tuple[int, int], ...]  # (dst_tp, tokens)
    concurrent: tuple[int, int, int] | None = None  # (dst_tp, requests, tokens each)
    repeats: int = 5
    verify: bool = False
    options: tuple[tuple[str, object], ...] = ()
    memory: Placement = HOST  # where D keeps its regions
    prefill_memory: tuple[Placement, ...] = ()  # each P rank's; empty: host memory

    def prefill_placement(self, rank: int) -> Placement:
        return self.prefill_memory[rank] if self.prefill_memory else HOST


def duplicate_bytes(plan: TransferPlan) -> int:
    """Bytes written more than once to D (overlapping destination ranges): must be 0."""
    rows = sorted((int(r), int(o), int(n)) for rd in plan.reads
                  for r, o, n in zip(rd.dst_region, rd.dst_offset, rd.length, strict=True))
    dup, region, end = 0, -1, 0
    for r, o, n in rows:
        if r != region:
            region, end = r, 0
        dup += max(0, min(end, o + n) - o)
        end = max(end, o + n)
    return dup


class PeerProcess:
    """One P process and its stdout lines."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self._buf = b""
        self.meta = b""
        self.bases: list[int] = []
        self.devices: list[int] = []  # each region's device id (0: host memory)
        self.nixl_meta = ""

    async def line(self, prefix: str, timeout: float = 120.0) -> list[str]:
        assert self.process.stdout is not None
        with anyio.fail_after(timeout):
            while True:
                while b"\n" not in self._buf:
                    try:
                        self._buf += await self.process.stdout.receive()
                    except anyio.EndOfStream:
                        raise RuntimeError("benchmark P process exited") from None
                raw, _, self._buf = self._buf.partition(b"\n")
                if raw.decode().startswith(prefix):
                    return raw.decode().split(maxsplit=1)[1:] or [""]

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode() + b"\n")


@contextlib.asynccontextmanager
async def spawn_peers(group: Group, blocks: Sequence[int], tokens: int) -> AsyncIterator[list[PeerProcess]]:
    procs: list[PeerProcess] = []
    try:
        for rank in range(group.src_tp):
            argv = [sys.executable, "-m", "hybridxfer.bench._peer", "--layout", str(group.layout_path),
                    "--tp", str(group.src_tp), "--rank", str(rank), "--blocks", str(blocks[rank]),
                    "--tokens", str(tokens), "--transport", group.transport,
                    "--options", json.dumps(dict(group.options))] + (["--verify"] if group.verify else [])
            device = group.prefill_placement(rank).device
            argv += ["--device", device] if device is not None else []
            procs.append(PeerProcess(await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                        stderr=None)))
        for p in procs:
            p.meta = bytes.fromhex((await p.line("META "))[0])
            regions = json.loads((await p.line("REGIONS "))[0])
            p.bases = [int(v[0]) for v in regions.values()]
            p.devices = [int(v[2]) for v in regions.values()]
        yield procs
    finally:
        with anyio.CancelScope(shield=True):
            for p in procs:
                if p.process.returncode is None:
                    p.process.kill()
                await p.process.aclose()


def _shift(tables: dict[str, list[int]], by: int) -> dict[str, list[int]]:
    return {g: [b + by for b in ids] for g, ids in tables.items()}


def _merge(plans: Sequence[TransferPlan]) -> list[Descriptors]:
    """Every plan's rows, one table per source rank, in rank order."""
    merged = Descriptors.concat([plan.descriptors for plan in plans])
    return [part for _, part in sorted(merged.by_source().items())]


class _Ceiling:
    """The raw path of ``transport`` over given reads; set up once per case."""

    def __init__(self, transport: str, procs: list[PeerProcess], memory: list[Region], tmp: Path,
                 nixl: list[_raw.NixlInitiator], error_handling: bool, placement: Placement = HOST) -> None:
        self.transport, self.procs, self.memory, self.tmp = transport, procs, memory, tmp
        self.placement = placement
        self._nixl, self._eh = nixl, error_handling
        self._sockets: list[tuple[socket.socket, list[memoryview]]] = []
        self._ucxx: Any = None  # the plugin's RawReceiver
        self._ucxx_views: list[tuple[int, list[memoryview]]] = []
        self._reader: Any = None  # a plugin's raw reader (mooncake: RawMooncakeReader), needs no P help

    @property
    def name(self) -> str:
        return {"tcp": "raw-socket", "nixl": "raw-nixl", "ucxx": "raw-ucxx",
                "mooncake": "raw-mooncake"}[self.transport]

    async def setup(self, reads: Sequence[Descriptors]) -> None:
        for rd in reads:
            proc = self.procs[rd.source_rank]
            path = self.tmp / f"desc-{rd.source_rank}.npy"
            np.save(path, np.stack([rd.src_region, rd.src_offset, rd.length], axis=1))
            if self.transport == "tcp":
                await proc.send(f"RAW socket {path}")
                port = int((await proc.line("RAWREADY "))[0])
                sock = socket.create_connection(("127.0.0.1", port))
                self._sockets.append((sock, _raw.dst_views(rd, self.placement.host_views(self.memory))))
            elif self.transport == "nixl":
                if not self._nixl:
                    self._nixl.append(_raw.NixlInitiator(self.memory, f"raw-D-{time.monotonic_ns()}", self.placement))
                if not proc.nixl_meta:
                    await proc.send("RAW nixl")
                    proc.nixl_meta = (await proc.line("RAWREADY "))[0]
                self._nixl[0].prepare(proc.nixl_meta, proc.bases, rd, proc.devices)
            elif self.transport == "mooncake":
                if self._reader is None:
                    self._reader = _raw.raw_plugin("mooncake").RawMooncakeReader(self.placement.host_views(self.memory))
                self._reader.prepare(AgentInfo.from_bytes(proc.meta).transport_metadata, rd)
            else:
                if self._ucxx is None:
                    self._ucxx = _raw.raw_plugin("ucxx").RawReceiver()
                address = self._ucxx.address
                await proc.send(f"RAW ucxx {path} {address} {_TAG + rd.source_rank} {int(self._eh)}")
                await proc.line("RAWREADY")
                self._ucxx_views.append((rd.source_rank, _raw.dst_views(rd, self.placement.host_views(self.memory))))

    async def run_once(self) -> float:
        t0 = time.perf_counter()
        if self.transport == "tcp":
            async with anyio.create_task_group() as tg:
                for sock, views in self._sockets:
                    tg.start_soon(anyio.to_thread.run_sync, _raw.socket_receive, sock, views)
        elif self.transport == "nixl":
            await anyio.to_thread.run_sync(self._nixl[0].read_all)
        elif self.transport == "mooncake":
            await anyio.to_thread.run_sync(self._reader.read_all)
        else:
            posted = [f for rank, views in self._ucxx_views for f in self._ucxx.post(views, _TAG + rank)]
            t0 = time.perf_counter()
            for rank, _ in self._ucxx_views:
                await self.procs[rank].send("GO")
            await self._ucxx.wait(posted)
        return time.perf_counter() - t0

    async def teardown(self) -> None:
        for sock, _ in self._sockets:
            sock.close()
        if self._nixl:
            self._nixl[0].release()
        if self._reader is not None:
            self._reader.close()
        for rank, _ in self._ucxx_views:
            await self.procs[rank].send("STOP")
            await self.procs[rank].line("STOPPED")


async def _one_case(group: Group, agent: Agent, peers: list[Peer], procs: list[PeerProcess], memory: list[Region],
                    dst: RankLayout, src_layouts: tuple[RankLayout, ...], dst_tp: int, tokens: int,
                    requests: int, per_request_blocks: tuple[int, int], tmp: Path,
                    nixl: list[_raw.NixlInitiator], verify: bool) -> CaseResult:
    template = compile_plan(src_layouts, dst)
    sb0, db0 = contiguous_block_tables(src_layouts[0], tokens), contiguous_block_tables(dst, tokens)
    tables = [(_shift(sb0, i * per_request_blocks[0]), _shift(db0, i * per_request_blocks[1]))
              for i in range(requests)]
    first = [template.bind(sb, db, num_tokens=tokens) for sb, db in tables]
    plans = [p for p in first if isinstance(p, TransferPlan)]
    merged = _merge(plans)
    nbytes = sum(r.total_bytes for r in merged)
    eh = bool(dict(group.options).get("endpoint_error_handling", True))
    placement = group.memory
    ceiling = _Ceiling(group.transport, procs, memory, tmp, nixl, eh, placement)
    await ceiling.setup(merged)
    vllm = None
    if group.transport == "nixl":  # vLLM's scheme: per-kernel-block rows, same bytes, raw NIXL
        vllm = VllmDescriptorBaseline(memory, uncoalesced_reads(src_layouts, dst, tables, tokens),
                                      [(p.nixl_meta, p.bases, p.devices) for p in procs], placement)
        if vllm.bytes != nbytes:
            raise RuntimeError(f"uncoalesced rows move {vllm.bytes} bytes, the plan {nbytes}")
    scratch = placement.scratch(nbytes)
    if verify:
        fresh = destination_memory(dst)
        placement.load(memory, [fresh[name] for name in dst.region_names])
    t: dict[str, list[float]] = {k: [] for k in ("raw", "memcpy", "hx", "compile", "bind", "prepare", "vllm")}
    try:
        for i in range(group.repeats + 1):
            raw = await ceiling.run_once()
            if vllm is not None:
                seconds = await anyio.to_thread.run_sync(vllm.run_once)
                if i:
                    t["vllm"].append(seconds)
            c0 = time.perf_counter()
            placement.memcpy_once(scratch, merged, memory)  # device copies: synchronized inside
            c1 = time.perf_counter()
            compile_plan(src_layouts, dst, cache=False)
            c2 = time.perf_counter()
            executables = []
            bind = prep = 0.0
            for sb, db in tables:
                b0 = time.perf_counter()
                plan = template.bind(sb, db, num_tokens=tokens)
                b1 = time.perf_counter()
                assert isinstance(plan, TransferPlan)
                executables.append(agent.prepare(plan, peers, f"bench-{time.monotonic_ns()}"))
                bind, prep = bind + b1 - b0, prep + time.perf_counter() - b1
            h0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for ex in executables:
                    tg.start_soon(functools.partial(ex.execute, timeout=300))
            h1 = time.perf_counter()
            if i:
                for key, value in (("raw", raw), ("memcpy", c1 - c0), ("compile", c2 - c1),
                                   ("bind", bind / requests), ("prepare", prep / requests), ("hx", h1 - h0)):
                    t[key].append(value)
    finally:
        await ceiling.teardown()
        if vllm is not None:
            vllm.release()
    verified = False
    if verify:
        want = expected_destination(dst, tokens, template.chunk_tokens)
        diff = mismatches(dict(zip(dst.region_names, placement.to_host(memory), strict=True)), want)
        if diff:
            raise RuntimeError(f"{group.transport} P{group.src_tp}->D{dst_tp} {tokens} tokens: " + "; ".join(diff))
        verified = True
    stats = [p.statistics for p in plans]
    return CaseResult(
        transport=group.transport, layout=dst.layout.model, src_tp=group.src_tp, dst_tp=dst_tp, tokens=tokens,
        requests=requests, bytes=nbytes, descriptors=sum(s.descriptor_count for s in stats),
        descriptors_uncoalesced=sum(s.descriptor_count_uncoalesced for s in stats),
        padding_bytes_skipped=sum(s.padding_bytes_skipped for s in stats),
        duplicate_bytes=sum(duplicate_bytes(p) for p in plans),
        hybridxfer=spread(t["hx"]), ceiling_name=ceiling.name, ceiling=spread(t["raw"]),
        memcpy=spread(t["memcpy"]), plan_compile=spread(t["compile"]), plan_bind=spread(t["bind"]),
        plan_prepare=spread(t["prepare"]), verified=verified,
        vllm_descriptors=spread(t["vllm"]) if t["vllm"] else None,
        vllm_descriptor_count=vllm.descriptor_count if vllm is not None else 0)


def _request_blocks(layout_tp_rank: RankLayout, tokens: int) -> int:
    return sum(len(v) for v in contiguous_block_tables(layout_tp_rank, tokens).values())


async def run_group(group: Group, report: Any = None) -> list[CaseResult]:
    """Run every case of ``group``; ``report(result)`` is called as each case finishes."""
    layout = load_layout(group.layout_path)
    tmax = max(t for _, t in group.cases) if group.cases else 0
    conc = group.concurrent
    need_tokens = [(1, tmax)] + ([(conc[1], conc[2])] if conc else [])

    def blocks(tp: int, rank: int) -> int:
        return max(blocks_for(layout, tp, t, requests=n, rank=rank) for n, t in need_tokens if t)

    results: list[CaseResult] = []
    dst_tps = sorted({d for d, _ in group.cases} | ({conc[0]} if conc else set()))
    with tempfile.TemporaryDirectory(prefix="hx-bench-") as tmpdir:
        async with spawn_peers(group, [blocks(group.src_tp, r) for r in range(group.src_tp)], tmax) as procs:
            for dst_tp in dst_tps:
                dst = layout.for_rank(dst_tp, 0, num_blocks=blocks(dst_tp, 0))
                memory = group.memory.allocate(dst.region_sizes)  # zeroed: every page touched
                nixl: list[_raw.NixlInitiator] = []
                async with Agent("bench-d0", transport=group.transport, transport_options=dict(group.options),
                                 role="decode", rank=0, tp_size=dst_tp, layout=dst) as agent:
                    for name, m in zip(dst.region_names, memory, strict=True):
                        await agent.register(name, m)
                    peers = [await agent.connect(p.meta) for p in procs]
                    src_layouts = agent.source_layouts(peers)
                    todo = [(t, 1) for d, t in group.cases if d == dst_tp]
                    if conc and conc[0] == dst_tp:
                        todo.append((conc[2], conc[1]))
                    for tokens, requests in todo:
                        per = (_request_blocks(src_layouts[0], tokens), _request_blocks(dst, tokens))
                        result = await _one_case(group, agent, peers, procs, memory, dst, src_layouts, dst_tp,
                                                 tokens, requests, per, Path(tmpdir), nixl,
                                                 group.verify and requests == 1 and tokens == tmax)
                        results.append(result)
                        if report is not None:
                            report(result)
    return results

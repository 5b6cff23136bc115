"""``hybridxfer pull``: a D rank that pulls synthetic requests from ``serve`` and verifies them.

The "iperf client" half, and the D-rank process of ``hybridxfer demo``. It fetches every
P rank's metadata from the ``--connect`` addresses, plans each request against the P
layouts those ranks published, runs the requests concurrently (``await plan.execute()``),
then compares every byte of its memory with the oracle's expectation — untouched bytes
included. Exit 1 on any mismatch or failure.

``--events`` (for ``demo``) replaces the human output with ``EV`` lines on stdout:
``EV phase NAME``, ``EV total BYTES``, ``EV ready`` (then it waits for a line on stdin, so
that every D rank starts transferring at once), ``EV bytes N`` and a final ``EV result JSON``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from typing import Any

import anyio
import attrs

from hybridxfer.errors import ConnectError, TransferError

__all__ = ["PullResult", "add_parser"]

log = logging.getLogger("hybridxfer.cli")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pull", help="a D rank: pull from 'serve', verify every byte, report GB/s")
    p.add_argument("layout", metavar="LAYOUT")
    p.add_argument("--src-tp", type=int, required=True, metavar="P")
    p.add_argument("--dst-tp", type=int, required=True, metavar="D")
    p.add_argument("--rank", type=int, required=True, metavar="R", help="this D rank")
    p.add_argument("--connect", nargs="+", required=True, metavar="HOST:PORT",
                   help="metadata addresses of 'serve' processes (together: every P rank)")
    p.add_argument("--tokens", type=int, required=True, metavar="N", help="tokens per request (as served)")
    p.add_argument("--requests", type=int, default=1, metavar="K", help="requests to pull concurrently (<= served)")
    p.add_argument("--transport", default="tcp", metavar="NAME")
    p.add_argument("--secret-file", metavar="F", help="shared secret (default $HYBRIDXFER_SECRET)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-request deadline (default 120)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=_run)


@attrs.frozen
class PullResult:
    """What one D rank moved and whether every byte matched."""

    rank: int
    src_ranks: tuple[int, ...]
    requests: int
    bytes: int
    bytes_by_kind: dict[str, int]
    descriptors: int
    padding_bytes_skipped: int
    seconds: float
    verified: bool
    mismatches: tuple[str, ...]

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["src_ranks"], d["mismatches"], d["gbps"] = list(self.src_ranks), list(self.mismatches), self.gbps
        return d


def _emit(events: bool, *parts: object) -> None:
    if events:
        print("EV", *parts, flush=True)


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli import UsageError
    from hybridxfer.cli._metadata import parse_endpoint

    try:
        endpoints = [parse_endpoint(c) for c in args.connect]
    except ValueError as exc:
        raise UsageError(f"--connect: {exc}") from exc
    if args.src_tp < 1 or args.dst_tp < 1 or not 0 <= args.rank < args.dst_tp:
        raise UsageError("--rank must lie in [0, --dst-tp) and TP sizes must be >= 1")
    if args.tokens < 1 or args.requests < 1:
        raise UsageError("--tokens and --requests must be >= 1")
    result = anyio.run(_pull, args, endpoints)
    if args.events:
        _emit(True, "result", json.dumps(result.to_json()))
    elif args.json:
        print(json.dumps(result.to_json()))
    else:
        kinds = ", ".join(f"{k} {v:,} B" for k, v in sorted(result.bytes_by_kind.items()))
        print(f"D rank {result.rank}/{args.dst_tp} pulled {result.requests} x {args.tokens} tokens from "
              f"P ranks {list(result.src_ranks)}: {result.bytes:,} B ({kinds}) in {result.descriptors:,} "
              f"descriptors, padding skipped {result.padding_bytes_skipped:,} B")
        print(f"{result.seconds:.3f} s, {result.gbps:.2f} GB/s, "
              f"{'verified: every byte matches' if result.verified else 'MISMATCH'}")
    for line in result.mismatches:
        print(f"mismatch: {line}", file=sys.stderr)
    return 0 if result.verified else 1


async def _pull(args: argparse.Namespace, endpoints: list[Any]) -> PullResult:
    from hybridxfer.cli._metadata import fetch_metadata, read_secret
    from hybridxfer.cli._progress import CountingTransport
    from hybridxfer.cli._requests import expected_destination, request_tables
    from hybridxfer.cli._serve import transport_options
    from hybridxfer.execute import Agent
    from hybridxfer.layout import load_layout
    from hybridxfer.plan import compile_plan
    from hybridxfer.testing.synthetic import blocks_for, destination_memory, mismatches
    from hybridxfer.transport.registry import open_transport

    secret = read_secret(args.secret_file)
    layout = load_layout(args.layout)
    dst = layout.for_rank(args.dst_tp, args.rank, num_blocks=blocks_for(
        layout, args.dst_tp, args.tokens, requests=args.requests, rank=args.rank))
    memory = destination_memory(dst)
    _emit(args.events, "phase", "connecting")
    published: dict[int, bytes] = {}
    for endpoint in endpoints:
        for meta in await fetch_metadata(endpoint, secret):
            if meta.tp != args.src_tp:
                raise ConnectError(f"{endpoint} serves TP {meta.tp}, not --src-tp {args.src_tp}")
            published[meta.rank] = meta.metadata
    missing = sorted(set(range(args.src_tp)) - set(published))
    if missing:
        raise ConnectError(f"no --connect address serves P ranks {missing}")
    inner = open_transport(args.transport, name=f"pull-d{args.rank}",
                           **transport_options(args.transport, "127.0.0.1", secret))
    transport = CountingTransport(inner, lambda n: _emit(args.events, "bytes", n)) if args.events else inner
    async with Agent(f"pull-d{args.rank}", transport=transport, role="decode", rank=args.rank,
                     tp_size=args.dst_tp, layout=dst) as agent:
        for name in dst.region_names:
            await agent.register(name, memory[name])
        peers = [await agent.connect(published[r]) for r in range(args.src_tp)]
        src_layouts = agent.source_layouts(peers)
        served = src_layouts[0].num_blocks // max(1, sum(len(v) for v in request_tables(src_layouts[0], args.tokens, 0).values()))
        if args.requests > served:
            raise ConnectError(f"P holds {served} requests of {args.tokens} tokens; asked for {args.requests} "
                               "(serve with matching --tokens and --requests)")
        tag = uuid.uuid4().hex[:8]
        plans = [agent.plan(peers, request_id=f"pull-{tag}-d{args.rank}-r{i}",
                            src_blocks=request_tables(src_layouts[0], args.tokens, i),
                            dst_blocks=request_tables(dst, args.tokens, i), num_tokens=args.tokens)
                 for i in range(args.requests)]
        total = sum(p.plan.statistics.bytes for p in plans)
        _emit(args.events, "total", total)
        if args.events:  # demo starts every D rank's transfer at once: wait for its "go"
            _emit(True, "ready")
            await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        _emit(args.events, "phase", "transferring")
        started = time.perf_counter()
        failures: list[TransferError] = []
        async with anyio.create_task_group() as tg:
            for executable in plans:
                async def run(ex: Any = executable) -> None:
                    try:
                        await ex.execute(timeout=args.timeout)
                    except TransferError as exc:
                        failures.append(exc)
                tg.start_soon(run)
        seconds = time.perf_counter() - started
        if failures:
            raise failures[0]
    _emit(args.events, "phase", "verifying")
    chunk = compile_plan(src_layouts, dst).chunk_tokens
    diff = mismatches(memory, expected_destination(dst, args.tokens, chunk, args.requests))
    stats = [p.plan.statistics for p in plans]
    kinds: dict[str, int] = {}
    for s in stats:
        for kind, n in s.bytes_by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + n
    return PullResult(rank=args.rank, src_ranks=tuple(sorted({r for p in plans for r in p.plan.source_ranks})),
                      requests=args.requests, bytes=total, bytes_by_kind=kinds,
                      descriptors=sum(s.descriptor_count for s in stats),
                      padding_bytes_skipped=sum(s.padding_bytes_skipped for s in stats),
                      seconds=seconds, verified=not diff, mismatches=tuple(diff))

"""``hybridxfer pull``: a D rank that pulls synthetic requests from ``serve`` and verifies them.

The "iperf client" half, and the D-rank process of ``hybridxfer demo``. It fetches every
P rank's metadata from the ``--connect`` addresses — which lists the model P holds and
the requests it serves — checks its own arguments against that *before allocating
anything* (``--tokens`` and ``--requests`` default to what P serves), plans each request
against the P layouts those ranks published, runs the requests concurrently, then
compares every byte of its memory with the oracle's expectation — untouched bytes
included. Exit 1 on any mismatch or failure. ``--timeout`` bounds everything from the
first connection attempt to the last byte.

``--etcd URL`` (instead of ``--connect``) finds the P ranks in the cluster directory: it
waits for the records ``NAME-p0`` .. ``NAME-p{P-1}`` that ``serve --etcd`` publishes
(``--name``, default the model id), fetches metadata from the addresses they hold, and runs
the transfer under :meth:`~hybridxfer.discovery.PeerDirectory.guard` of every record, so a
P whose lease expires or that restarts ends the pull at once with
:class:`~hybridxfer.errors.PeerGoneError` rather than at ``--timeout``.

``--events`` (for ``demo``) replaces the human output with ``EV`` lines on stdout:
``EV phase NAME``, ``EV total BYTES``, ``EV ready`` (then it waits for a line on stdin, so
that every D rank starts transferring at once; that wait is not counted against
``--timeout``), ``EV bytes N`` and a final ``EV result JSON``.

``--tls-cert``/``--tls-key``/``--tls-ca``: the metadata fetch and every transport
connection are TLS 1.3 with both certificates verified; ``serve`` must use TLS too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from hybridxfer.errors import (
    ConnectError,
    IncompatibleLayoutsError,
    PeerRestartedError,
    TransferError,
    TransferTimeout,
)

if TYPE_CHECKING:
    from hybridxfer.cli._metadata import Endpoint, RankMetadata, ServedRequest
    from hybridxfer.layout import Layout
    from hybridxfer.transport import TlsConfig, TlsContexts

__all__ = ["PullResult", "Served", "add_parser", "check_served"]

log = logging.getLogger("hybridxfer.cli")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pull", help="a D rank: pull from 'serve', verify every byte, report GB/s")
    p.add_argument("layout", metavar="LAYOUT", help="layout file, or the model id of a shipped layout")
    p.add_argument("--src-tp", type=int, required=True, metavar="P", help="TP size of the P engine served")
    p.add_argument("--dst-tp", type=int, required=True, metavar="D", help="TP size of this D engine")
    p.add_argument("--rank", type=int, required=True, metavar="R", help="this D rank, in [0, D)")
    p.add_argument("--connect", nargs="+", default=None, metavar="HOST:PORT",
                   help="metadata addresses of 'serve' processes (together: every P rank)")
    p.add_argument("--etcd", default=None, metavar="URL",
                   help="find the P ranks in this etcd cluster directory instead of --connect")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="with --etcd: the P engine's directory name, as 'serve --name' (default: the model id)")
    p.add_argument("--tokens", type=int, default=None, metavar="N",
                   help="tokens per request (default: what P serves; anything else is refused)")
    p.add_argument("--requests", type=int, default=None, metavar="K",
                   help="requests to pull concurrently (default: every request P serves)")
    p.add_argument("--transport", default="tcp", metavar="NAME", help="transport name (default tcp)")
    p.add_argument("--secret-file", metavar="F", help="shared secret (default $HYBRIDXFER_SECRET)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="deadline from the first connection attempt to the last byte (default 120)")
    p.add_argument("--json", action="store_true", help="print the result (or the error) as JSON")
    p.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    from hybridxfer.cli._tls import add_tls_arguments

    add_tls_arguments(p)
    p.set_defaults(handler=_run)


@attrs.frozen
class PullResult:
    """What one D rank moved and whether every byte matched."""

    rank: int
    src_ranks: tuple[int, ...]
    requests: int
    tokens: int
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


@attrs.frozen
class Served:
    """What the P ranks serve, as this pull will use it: request ids and their size."""

    request_ids: tuple[str, ...]
    tokens: int


def _tls(args: argparse.Namespace) -> tuple[TlsConfig, TlsContexts] | None:
    """What ``--tls-*`` gave (loaded by ``_run``; absent when called another way)."""
    loaded: tuple[TlsConfig, TlsContexts] | None = getattr(args, "tls", None)
    return loaded


def _emit(events: bool, *parts: object) -> None:
    if events:
        print("EV", *parts, flush=True)


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli._usage import UsageError
    from hybridxfer.cli._limits import MAX_REQUESTS, MAX_TOKENS, check_tp
    from hybridxfer.cli._metadata import parse_endpoint

    if (args.connect is None) == (args.etcd is None):
        raise UsageError("give exactly one of --connect HOST:PORT ... or --etcd URL")
    if args.name is not None and args.etcd is None:
        raise UsageError("--name is the directory name of P: it needs --etcd")
    try:
        endpoints = [parse_endpoint(c) for c in args.connect or ()]
    except ValueError as exc:
        raise UsageError(f"--connect: {exc}") from exc
    check_tp(src_tp=args.src_tp, dst_tp=args.dst_tp)
    if not 0 <= args.rank < args.dst_tp:
        raise UsageError("--rank must lie in [0, --dst-tp)")
    if args.tokens is not None and not 1 <= args.tokens <= MAX_TOKENS:
        raise UsageError(f"--tokens must lie in [1, {MAX_TOKENS}]")
    if args.requests is not None and not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must lie in [1, {MAX_REQUESTS}]")
    if not 0 < args.timeout < math.inf:
        raise UsageError("--timeout must be a positive number of seconds")
    from hybridxfer.cli._serve import check_tls_transport
    from hybridxfer.cli._tls import tls_from_args

    args.tls = tls_from_args(args)
    check_tls_transport(args.transport, args.tls)
    result = anyio.run(_pull, args, endpoints)
    if args.events:
        _emit(True, "result", json.dumps(result.to_json()))
    elif args.json:
        print(json.dumps(result.to_json()))
    else:
        kinds = ", ".join(f"{k} {v:,} B" for k, v in sorted(result.bytes_by_kind.items()))
        print(f"D rank {result.rank}/{args.dst_tp} pulled {result.requests} x {result.tokens} tokens from "
              f"P ranks {list(result.src_ranks)}: {result.bytes:,} B ({kinds}) in {result.descriptors:,} "
              f"descriptors, padding skipped {result.padding_bytes_skipped:,} B")
        print(f"{result.seconds:.3f} s, {result.gbps:.2f} GB/s, "
              f"{'verified: every byte matches' if result.verified else 'MISMATCH'}")
    for line in result.mismatches:
        print(f"mismatch: {line}", file=sys.stderr)
    return 0 if result.verified else 1


def check_served(published: Sequence[RankMetadata], *, model: str, model_digest: str, tokens: int | None,
                 requests: int | None) -> Served:
    """What to pull, from what the P ranks published; refuses any disagreement with both sides' values.

    Raises :class:`IncompatibleLayoutsError` when P holds another model (named by id, with
    the digests when the ids agree but the dimensions do not), ``UsageError`` when
    ``tokens``/``requests`` ask for what P does not serve.
    """
    from hybridxfer.cli._usage import UsageError

    for meta in published:
        if meta.model_digest != model_digest:
            same = f"model {model!r} with other dimensions or dtypes (model digest {_short(meta.model_digest)} " \
                   f"vs {_short(model_digest)})" if meta.model == model else f"model {meta.model!r}"
            raise IncompatibleLayoutsError(
                f"P rank {meta.rank} serves {same}; this pull's layout is model {model!r}")
    served = {(q.id, q.tokens) for meta in published for q in meta.requests}
    per_rank = {tuple((q.id, q.tokens) for q in meta.requests) for meta in published}
    if len(per_rank) > 1:
        raise ConnectError("the P ranks serve different requests: "
                           + "; ".join(f"rank {m.rank}: {_describe(m.requests)}" for m in published))
    if not served:
        raise ConnectError("P serves no requests")
    held = published[0].requests
    sizes = sorted({q.tokens for q in held})
    if tokens is None:
        if len(sizes) > 1:
            raise UsageError(f"P serves requests of several sizes ({_describe(held)}): pass --tokens")
        tokens = sizes[0]
    matching = tuple(q.id for q in held if q.tokens == tokens)
    if not matching:
        raise UsageError(f"--tokens {tokens} does not match what P serves: {_describe(held)} "
                         f"(leave --tokens out, or pass --tokens {sizes[0]})")
    if requests is None:
        requests = len(matching)
    if requests > len(matching):
        raise UsageError(f"--requests {requests} is more than P serves: {_describe(held)}")
    return Served(matching[:requests], tokens)


def _short(digest: str) -> str:
    return digest.rpartition(":")[2][:12]


def _describe(requests: Sequence[ServedRequest]) -> str:
    by_size: dict[int, list[str]] = {}
    for q in requests:
        by_size.setdefault(q.tokens, []).append(q.id)
    return ", ".join(f"{len(ids)} request{'s' if len(ids) != 1 else ''} of {size} tokens ({', '.join(ids[:4])}"
                     f"{', ...' if len(ids) > 4 else ''})" for size, ids in sorted(by_size.items())) or "nothing"


class _Deadline:
    """One deadline for the whole pull; ``paused`` takes the time waiting for demo's start out of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.phase = "connecting"
        self.scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def left(self) -> float:
        return max(0.0, self.scope.deadline - anyio.current_time())

    async def paused(self, wait: Callable[[], Awaitable[object]]) -> None:
        left = self.left()
        self.scope.deadline = math.inf
        await wait()
        self.scope.deadline = anyio.current_time() + left


async def _pull(args: argparse.Namespace, endpoints: list[Endpoint]) -> PullResult:
    from hybridxfer.cli._layouts import resolve_layout
    from hybridxfer.cli._metadata import read_secret
    from hybridxfer.layout import load_layout

    secret = read_secret(args.secret_file)
    layout = load_layout(resolve_layout(args.layout))
    deadline = _Deadline(args.timeout)
    _emit(args.events, "phase", "connecting")
    with deadline.scope:
        if args.etcd is not None:
            return await _pull_through_etcd(args, layout, secret, deadline)
        return await _pull_from(args, layout, endpoints, secret, deadline)
    raise TransferTimeout(f"pull did not finish within --timeout {args.timeout:g} s (while {deadline.phase})")


async def _pull_through_etcd(args: argparse.Namespace, layout: Layout, secret: bytes,
                             deadline: _Deadline) -> PullResult:
    """Find every P rank's record, then pull while each of them stays published."""
    from hybridxfer.cli._metadata import parse_endpoint
    from hybridxfer.cli._serve import record_name
    from hybridxfer.discovery import PeerDirectory

    base = args.name or layout.model
    async with PeerDirectory(args.etcd) as directory, contextlib.AsyncExitStack() as guards:
        records = []
        for rank in range(args.src_tp):
            name = record_name(base, rank)
            deadline.phase = f"waiting for {name} in etcd {directory.url}"
            record = await directory.wait_for(name, timeout_s=max(deadline.left() - 0.05, 0.0))
            if record.model_id != layout.model or record.tp_size != args.src_tp or record.tp_rank != rank:
                raise IncompatibleLayoutsError(
                    f"etcd record {name!r} is rank {record.tp_rank} of TP {record.tp_size} serving "
                    f"{record.model_id!r}; this pull wants rank {rank} of --src-tp {args.src_tp} of {layout.model!r}")
            records.append(record)
            await guards.enter_async_context(directory.guard(record))
        try:
            endpoints = list(dict.fromkeys(parse_endpoint(r.address) for r in records))
        except ValueError as exc:
            raise ConnectError(f"an etcd record holds a bad metadata address: {exc}") from exc
        return await _pull_from(args, layout, endpoints, secret, deadline,
                                incarnations={r.tp_rank: r.incarnation for r in records})


async def _pull_from(args: argparse.Namespace, layout: Layout, endpoints: Sequence[Endpoint], secret: bytes,
                     deadline: _Deadline, incarnations: Mapping[int, str] | None = None) -> PullResult:
    """Fetch every P rank's metadata from ``endpoints`` and pull. ``incarnations`` (from the
    directory): what each rank must be, so metadata of another incarnation is refused."""
    from hybridxfer.cli._metadata import fetch_metadata
    from hybridxfer.execute import AgentInfo

    published: dict[int, RankMetadata] = {}
    for endpoint in endpoints:
        deadline.phase = f"fetching metadata from {endpoint}"
        # a little inside the deadline, so that the fetch can say why it failed
        tls = _tls(args)
        for meta in await fetch_metadata(endpoint, secret, timeout=max(deadline.left() - 0.05, 0.0),
                                         tls=tls[1] if tls is not None else None,
                                         identity=f"pull-d{args.rank}"):  # our transport's client name
            if meta.tp != args.src_tp:
                raise ConnectError(f"{endpoint} serves P ranks of TP {meta.tp}, not --src-tp {args.src_tp}")
            published[meta.rank] = meta
    missing = sorted(set(range(args.src_tp)) - set(published))
    if missing:
        raise ConnectError(f"no --connect address serves P ranks {missing}")
    for rank, expected in (incarnations or {}).items():
        info = AgentInfo.from_bytes(published[rank].metadata)
        if info.incarnation != expected:
            raise PeerRestartedError("the metadata address holds another P than the directory lists",
                                     peer=info.name, old_incarnation=expected, new_incarnation=info.incarnation)
    served = check_served([published[r] for r in range(args.src_tp)], model=layout.model,
                          model_digest=layout.model_digest, tokens=args.tokens, requests=args.requests)
    deadline.phase = "connecting to the P ranks"
    return await _transfer(args, layout, published, served, secret, deadline)


async def _transfer(args: argparse.Namespace, layout: Layout, published: dict[int, RankMetadata], served: Served,
                    secret: bytes, deadline: _Deadline) -> PullResult:
    from hybridxfer.cli._limits import check_memory, working_set
    from hybridxfer.cli._serve import transport_options
    from hybridxfer.execute import Agent, CountingTransport
    from hybridxfer.plan import compile_plan
    from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches, request_tables
    from hybridxfer.transport.registry import open_transport

    tokens, count = served.tokens, len(served.request_ids)
    dst = layout.for_rank(args.dst_tp, args.rank, num_blocks=blocks_for(
        layout, args.dst_tp, tokens, requests=count, rank=args.rank))
    check_memory(working_set(dst.total_bytes, count), f"pulling {count} x {tokens} tokens as D rank {args.rank}")
    memory = destination_memory(dst)
    tls = _tls(args)
    inner = open_transport(args.transport, name=f"pull-d{args.rank}",
                           **transport_options(args.transport, "127.0.0.1", secret,
                                               tls=tls[0] if tls is not None else None))
    transport = CountingTransport(inner, lambda n: _emit(args.events, "bytes", n), step_bytes=16 << 20) if args.events else inner
    async with Agent(f"pull-d{args.rank}", transport=transport, role="decode", rank=args.rank,
                     tp_size=args.dst_tp, layout=dst) as agent:
        for name in dst.region_names:
            await agent.register(name, memory[name])
        peers = [await agent.connect(published[r].metadata) for r in range(args.src_tp)]
        src_layouts = agent.source_layouts(peers)
        deadline.phase = "planning"
        tag = uuid.uuid4().hex[:8]
        plans = [agent.plan(peers, request_id=f"pull-{tag}-d{args.rank}-{request_id}",
                            src_blocks=request_tables(src_layouts[0], tokens, i),
                            dst_blocks=request_tables(dst, tokens, i), num_tokens=tokens)
                 for i, request_id in enumerate(served.request_ids)]
        total = sum(p.plan.statistics.bytes for p in plans)
        _emit(args.events, "total", total)
        if args.events:  # demo starts every D rank's transfer at once: wait for its "go"
            _emit(True, "ready")
            await deadline.paused(lambda: anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True))
        _emit(args.events, "phase", "transferring")
        deadline.phase = "transferring"
        started = time.perf_counter()
        failures: list[TransferError] = []
        async with anyio.create_task_group() as tg:
            for executable in plans:
                async def run(ex: Any = executable) -> None:
                    try:
                        await ex.execute(timeout=max(deadline.left(), 1e-3))
                    except TransferError as exc:
                        failures.append(exc)
                tg.start_soon(run)
        seconds = time.perf_counter() - started
        if failures:
            raise failures[0]
    _emit(args.events, "phase", "verifying")
    chunk = compile_plan(src_layouts, dst).chunk_tokens
    diff = mismatches(memory, expected_destination(dst, tokens, chunk, count))
    stats = [p.plan.statistics for p in plans]
    kinds: dict[str, int] = {}
    for s in stats:
        for kind, n in s.bytes_by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + n
    return PullResult(rank=args.rank, src_ranks=tuple(sorted({r for p in plans for r in p.plan.source_ranks})),
                      requests=count, tokens=tokens, bytes=total, bytes_by_kind=kinds,
                      descriptors=sum(s.descriptor_count for s in stats),
                      padding_bytes_skipped=sum(s.padding_bytes_skipped for s in stats),
                      seconds=seconds, verified=not diff, mismatches=tuple(diff))

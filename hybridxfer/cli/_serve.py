"""``hybridxfer serve``: P ranks holding a deterministic synthetic cache, for ``pull`` to read.

The "iperf server" half: with ``--rank`` one P rank, without it every rank of the TP
group in this one process. Each rank's memory is :mod:`hybridxfer.synthetic`'s image
of ``--requests`` requests of ``--tokens`` tokens, which a puller on another host can
recompute and verify without a copy. Metadata is published on ``--listen`` through the
side channel of :mod:`hybridxfer.cli._metadata`, together with the requests held (ids and
token counts), so that a puller asking for anything else is refused before it allocates.
The transport itself listens on an ephemeral port of the same host; the first line
printed is the metadata address (``listening on HOST:PORT``), since that is the one
pullers need.

With ``--etcd URL`` each served rank is also published in the cluster directory
(:class:`~hybridxfer.discovery.PeerDirectory`) as ``NAME-p{rank}`` — ``NAME`` from
``--name``, by default the model id — with the metadata address, model id, incarnation
and TP rank, under a lease of ``--etcd-ttl`` seconds kept alive while serving runs. A
serve that dies drops out of the directory when the lease expires; one that stops cleanly
withdraws at once. Pullers may then find it with ``pull --etcd`` instead of ``--connect``.

With ``--tls-cert``/``--tls-key``/``--tls-ca`` the metadata channel and every transport
connection are TLS 1.3 with both certificates verified (``docs/security.md``); a
puller needs the same three options, with its own certificate from the same CA.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from hybridxfer.errors import AuthenticationError, ConnectError

if TYPE_CHECKING:
    from hybridxfer.cli._metadata import ServedRequest
    from hybridxfer.execute import Agent
    from hybridxfer.transport import TlsConfig, TlsContexts

__all__ = ["add_parser", "record_name", "served_requests", "transport_options"]

log = logging.getLogger("hybridxfer.cli")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="P ranks holding a synthetic cache for 'pull' to read")
    p.add_argument("layout", metavar="LAYOUT", help="layout file, or the model id of a shipped layout")
    p.add_argument("--tp", type=int, required=True, metavar="P", help="TP size of the P engine")
    p.add_argument("--rank", type=int, default=None, metavar="R", help="serve one rank (default: all P ranks)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="metadata address pullers --connect to (port 0: pick one and print it)")
    p.add_argument("--transport", default="tcp", metavar="NAME", help="transport name (default tcp)")
    p.add_argument("--tokens", type=int, default=8192, metavar="N", help="tokens per request (default 8192)")
    p.add_argument("--requests", type=int, default=1, metavar="K", help="requests held (default 1)")
    p.add_argument("--secret-file", metavar="F", help="shared secret (default $HYBRIDXFER_SECRET)")
    p.add_argument("--advertise", metavar="HOST", help="address pullers reach the transport at (default: --listen host)")
    p.add_argument("--max-pulls", type=int, default=None, metavar="K",
                   help="exit after K >= 1 request completions, counted per served rank "
                        "(default: run until interrupted)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on PORT (needs the 'metrics' extra; 0: pick one and print it)")
    p.add_argument("--metrics-host", default=None, metavar="HOST",
                   help="address of the metrics endpoint (default: the --listen host)")
    p.add_argument("--etcd", default=None, metavar="URL",
                   help="also publish each rank in this etcd cluster directory (e.g. http://127.0.0.1:2379)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="directory name of this P engine; rank R is published as NAME-pR (default: the model id)")
    p.add_argument("--etcd-ttl", type=int, default=10, metavar="S",
                   help="lease of the published records in seconds, >= 2 (default 10)")
    p.add_argument("--require-grants", action="store_true",
                   help="serve a request's bytes only to pullers it was granted to: those that fetched the "
                        "metadata (tcp only; see docs/security.md)")
    p.add_argument("--grant-lease", type=float, default=300.0, metavar="S",
                   help="with --require-grants: seconds a fetch's grants last (default 300)")
    from hybridxfer.cli._tls import add_tls_arguments

    add_tls_arguments(p)
    p.set_defaults(handler=_run)


def record_name(name: str, rank: int) -> str:
    """The directory name of P rank ``rank`` of the engine published as ``name``."""
    return f"{name}-p{rank}"


def transport_options(transport: str, host: str, secret: bytes, advertise: str | None = None,
                      tls: TlsConfig | None = None) -> dict[str, object]:
    """Options for ``open_transport``: the TCP transport listens on ``host``, ephemeral port."""
    if transport != "tcp":
        return {}
    options: dict[str, object] = {"host": host, "port": 0}
    if secret:
        options["secret"] = secret
    if advertise:
        options["advertise_host"] = advertise
    if tls is not None:
        options["tls"] = tls
    return options


def check_tls_transport(transport: str, tls: object) -> None:
    """``--tls-*`` protect what runs over TCP sockets of ours; refuse them where the cache
    itself would travel outside (``UsageError``), rather than encrypt only the metadata."""
    from hybridxfer.cli._usage import UsageError

    if tls is not None and transport != "tcp":
        raise UsageError(f"--tls-cert/--tls-key/--tls-ca encrypt the tcp transport; the {transport} transport "
                         "moves the cache outside TLS (see docs/security.md): use --transport tcp, or no --tls-*")


def served_requests(requests: int, tokens: int) -> tuple[ServedRequest, ...]:
    """The ids and sizes ``serve`` publishes: request ``r{i}`` is the ``i``-th of
    :func:`hybridxfer.synthetic.request_tables`."""
    from hybridxfer.cli._metadata import ServedRequest

    return tuple(ServedRequest(f"r{i}", tokens) for i in range(requests))


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli._usage import UsageError
    from hybridxfer.cli._limits import MAX_REQUESTS, MAX_TOKENS, check_tp
    from hybridxfer.cli._metadata import is_loopback, parse_endpoint, read_secret

    try:
        endpoint = parse_endpoint(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from exc
    check_tp(tp=args.tp)
    if args.rank is not None and not 0 <= args.rank < args.tp:
        raise UsageError("--rank must lie in [0, --tp)")
    if not 1 <= args.tokens <= MAX_TOKENS or not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--tokens must lie in [1, {MAX_TOKENS}] and --requests in [1, {MAX_REQUESTS}]")
    if args.max_pulls is not None and args.max_pulls < 1:
        raise UsageError("--max-pulls must be >= 1 (leave it out to serve until interrupted)")
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        raise UsageError("--metrics-port must lie in [0, 65535]")
    if args.etcd is None and args.name is not None:
        raise UsageError("--name names the published records: it needs --etcd")
    if args.require_grants and args.transport != "tcp":
        raise UsageError(f"--require-grants is enforced by the tcp transport only, not {args.transport} "
                         "(see docs/security.md)")
    if not 0 < args.grant_lease < float("inf"):
        raise UsageError("--grant-lease must be a positive number of seconds")
    if args.etcd_ttl < 2:
        raise UsageError("--etcd-ttl must be >= 2 seconds (etcd leases count whole seconds)")
    if args.metrics_port is not None:
        from hybridxfer.cli._metrics import require_prometheus

        require_prometheus()  # before anything is opened or allocated
    from hybridxfer.cli._tls import tls_from_args

    tls = tls_from_args(args)
    check_tls_transport(args.transport, tls)
    secret = read_secret(args.secret_file)
    if not secret and tls is None and not is_loopback(endpoint.host):
        raise AuthenticationError(f"refusing to serve on {endpoint.host} without a shared secret or TLS: "
                                  "set HYBRIDXFER_SECRET, pass --secret-file, or give --tls-cert/--tls-key/--tls-ca")
    anyio.run(_serve, args, endpoint, secret, tls)
    return 0


async def _serve(args: argparse.Namespace, endpoint: Any, secret: bytes,
                 tls: tuple[TlsConfig, TlsContexts] | None = None) -> None:
    from hybridxfer.cli._layouts import resolve_layout
    from hybridxfer.cli._limits import check_memory, format_bytes, working_set
    from hybridxfer.cli._metadata import RankMetadata, serve_metadata
    from hybridxfer.execute import Agent
    from hybridxfer.layout import load_layout
    from hybridxfer.synthetic import blocks_for, source_memory

    layout = load_layout(resolve_layout(args.layout))
    ranks = [args.rank] if args.rank is not None else list(range(args.tp))
    rank_layouts = {rank: layout.for_rank(args.tp, rank, num_blocks=blocks_for(
        layout, args.tp, args.tokens, requests=args.requests, rank=rank)) for rank in ranks}
    registered = sum(r.total_bytes for r in rank_layouts.values())
    check_memory(working_set(registered, args.requests),
                 f"serving {args.requests} x {args.tokens} tokens of {layout.model} on P ranks {ranks}")
    served = served_requests(args.requests, args.tokens)
    options = transport_options(args.transport, endpoint.host, secret, args.advertise,
                                tls[0] if tls is not None else None)
    if args.require_grants:
        options["require_grants"] = True
    async with contextlib.AsyncExitStack() as stack:
        listener = await _listen(endpoint.host, endpoint.port, "--listen")
        await stack.enter_async_context(listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        print(f"listening on {type(endpoint)(endpoint.host, port)}", flush=True)
        agents: list[Agent] = []
        published: list[RankMetadata] = []
        for rank, rank_layout in rank_layouts.items():
            memory = source_memory(rank_layout, args.tokens, args.requests)
            agent = await stack.enter_async_context(Agent(
                f"serve-p{rank}", transport=args.transport, transport_options=options, role="prefill",
                rank=rank, tp_size=args.tp, layout=rank_layout))
            for name in rank_layout.region_names:
                await agent.register(name, memory[name])
            agents.append(agent)
            published.append(RankMetadata(rank, args.tp, agent.metadata(), served, layout.model, layout.model_digest))
        exporter, metrics_listener = None, None
        if args.metrics_port is not None:
            from hybridxfer.cli._metrics import ServeMetrics

            exporter = ServeMetrics(agents)
            metrics_host = args.metrics_host or endpoint.host
            metrics_listener = await _listen(metrics_host, args.metrics_port, "--metrics-port")
            await stack.enter_async_context(metrics_listener)
            metrics_port = metrics_listener.extra(anyio.abc.SocketAttribute.local_port)
            print(f"metrics on http://{type(endpoint)(metrics_host, metrics_port)}/metrics", flush=True)
        if args.etcd is not None:
            await _publish(stack, args, f"{args.advertise or endpoint.host}:{port}", layout.model, agents)
        print(f"serving {layout.model} P ranks {ranks} of TP {args.tp}: {args.requests} x {args.tokens} tokens "
              f"(requests {served[0].id}..{served[-1].id}), {format_bytes(registered)} registered, "
              f"transport {args.transport}{' over TLS 1.3' if tls is not None else ''}", flush=True)
        pulls = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(serve_metadata, listener, published, secret,
                                            tls=tls[1] if tls is not None else None,
                                            on_fetch=functools.partial(_grant_fetched, args, agents, served)
                                            if args.require_grants else None))
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            if exporter is not None and metrics_listener is not None:
                tg.start_soon(exporter.serve, metrics_listener)

            async def report(agent: Agent) -> None:
                nonlocal pulls
                async for done in agent.completed_requests():
                    print(f"done {done.request_id} rank {agent.rank} by {done.peer_name}", flush=True)
                    if exporter is not None:
                        exporter.request_completed(agent, done)
                    pulls += 1
                    if args.max_pulls is not None and pulls >= args.max_pulls:
                        tg.cancel_scope.cancel()

            for agent in agents:
                tg.start_soon(report, agent)


def _grant_fetched(args: argparse.Namespace, agents: Sequence[Agent], served: Sequence[ServedRequest],
                   identity: str) -> None:
    """Grant every served request, on every served rank, to the puller that fetched the
    metadata listing them (its certificate subject, else the name it declared), for
    ``--grant-lease`` seconds."""
    from hybridxfer.layout import RankLayout
    from hybridxfer.synthetic import request_tables

    if not identity:
        log.warning("serve: a puller fetched the metadata without naming itself; it is granted nothing")
        return
    for agent in agents:
        layout = agent.layout
        if not isinstance(layout, RankLayout):  # serve builds every agent with one
            continue
        for i, request in enumerate(served):
            agent.grant(request.id, identity, request_tables(layout, request.tokens, i), lease=args.grant_lease)
    print(f"granted {len(served)} requests on P ranks {[a.rank for a in agents]} to {identity} "
          f"for {args.grant_lease:g} s", flush=True)


async def _publish(stack: contextlib.AsyncExitStack, args: argparse.Namespace, address: str, model: str,
                   agents: Sequence[Agent]) -> None:
    """One leased record per served rank; withdrawn when ``stack`` closes."""
    from hybridxfer.discovery import PeerDirectory, PeerRecord

    directory = await stack.enter_async_context(PeerDirectory(args.etcd, ttl_s=args.etcd_ttl))
    for agent in agents:
        name = record_name(args.name or model, agent.rank)
        await directory.publish(PeerRecord(name=name, address=address, incarnation=agent.incarnation,
                                           model_id=model, role="prefill", tp_size=agent.tp_size,
                                           tp_rank=agent.rank))
        print(f"published {name} (incarnation {agent.incarnation}) in etcd {directory.url}", flush=True)


async def _listen(host: str, port: int, option: str) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConnectError(f"{option}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """SIGINT/SIGTERM end serving cleanly (the agents close their transports)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("serve: stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return

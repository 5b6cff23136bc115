"""``hybridxfer serve``: P ranks holding a deterministic synthetic cache, for ``pull`` to read.

The "iperf server" half: with ``--rank`` one P rank, without it every rank of the TP
group in this one process. Each rank's memory is :mod:`hybridxfer.cli._requests`' image
of ``--requests`` requests of ``--tokens`` tokens, which a puller on another host can
recompute and verify without a copy. Metadata is published on ``--listen`` through the
side channel of :mod:`hybridxfer.cli._metadata`; the transport itself listens on an
ephemeral port of the same host.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from typing import Any

import anyio

from hybridxfer.errors import AuthenticationError

__all__ = ["add_parser", "transport_options"]

log = logging.getLogger("hybridxfer.cli")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="P ranks holding a synthetic cache for 'pull' to read")
    p.add_argument("layout", metavar="LAYOUT")
    p.add_argument("--tp", type=int, required=True, metavar="P")
    p.add_argument("--rank", type=int, default=None, metavar="R", help="serve one rank (default: all P ranks)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="metadata address pullers --connect to (port 0: pick one and print it)")
    p.add_argument("--transport", default="tcp", metavar="NAME")
    p.add_argument("--tokens", type=int, default=8192, metavar="N", help="tokens per request (default 8192)")
    p.add_argument("--requests", type=int, default=1, metavar="K", help="requests held (default 1)")
    p.add_argument("--secret-file", metavar="F", help="shared secret (default $HYBRIDXFER_SECRET)")
    p.add_argument("--advertise", metavar="HOST", help="address pullers reach the transport at (default: --listen host)")
    p.add_argument("--max-pulls", type=int, default=0, metavar="K",
                   help="exit after K request completions, counted per served rank (default: run until interrupted)")
    p.set_defaults(handler=_run)


def transport_options(transport: str, host: str, secret: bytes, advertise: str | None = None) -> dict[str, object]:
    """Options for ``open_transport``: the TCP transport listens on ``host``, ephemeral port."""
    if transport != "tcp":
        return {}
    options: dict[str, object] = {"host": host, "port": 0}
    if secret:
        options["secret"] = secret
    if advertise:
        options["advertise_host"] = advertise
    return options


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli import UsageError
    from hybridxfer.cli._metadata import is_loopback, parse_endpoint, read_secret

    try:
        endpoint = parse_endpoint(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from exc
    if args.tp < 1 or (args.rank is not None and not 0 <= args.rank < args.tp):
        raise UsageError("--rank must lie in [0, --tp)")
    if args.tokens < 1 or args.requests < 1:
        raise UsageError("--tokens and --requests must be >= 1")
    secret = read_secret(args.secret_file)
    if not secret and not is_loopback(endpoint.host):
        raise AuthenticationError(f"refusing to serve on {endpoint.host} without a shared secret: "
                                  "set HYBRIDXFER_SECRET or pass --secret-file")
    anyio.run(_serve, args, endpoint, secret)
    return 0


async def _serve(args: argparse.Namespace, endpoint: Any, secret: bytes) -> None:
    from hybridxfer.cli._metadata import RankMetadata, serve_metadata
    from hybridxfer.cli._requests import source_memory
    from hybridxfer.execute import Agent
    from hybridxfer.layout import load_layout
    from hybridxfer.testing.synthetic import blocks_for

    layout = load_layout(args.layout)
    ranks = [args.rank] if args.rank is not None else list(range(args.tp))
    options = transport_options(args.transport, endpoint.host, secret, args.advertise)
    async with contextlib.AsyncExitStack() as stack:
        agents: list[Agent] = []
        published: list[RankMetadata] = []
        registered = 0
        for rank in ranks:
            num_blocks = blocks_for(layout, args.tp, args.tokens, requests=args.requests, rank=rank)
            rank_layout = layout.for_rank(args.tp, rank, num_blocks=num_blocks)
            memory = source_memory(rank_layout, args.tokens, args.requests)
            agent = await stack.enter_async_context(Agent(
                f"serve-p{rank}", transport=args.transport, transport_options=options, role="prefill",
                rank=rank, tp_size=args.tp, layout=rank_layout))
            for name in rank_layout.region_names:
                await agent.register(name, memory[name])
            registered += rank_layout.total_bytes
            agents.append(agent)
            published.append(RankMetadata(rank, args.tp, agent.metadata()))
        listener = await anyio.create_tcp_listener(local_host=endpoint.host, local_port=endpoint.port)
        await stack.enter_async_context(listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        print(f"serving {layout.model} P ranks {ranks} of TP {args.tp}: {args.requests} x {args.tokens} tokens, "
              f"{registered / 2**20:.1f} MiB registered, transport {args.transport}", flush=True)
        print(f"listening on {endpoint.host}:{port}", flush=True)
        pulls = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_metadata, listener, published, secret)
            tg.start_soon(_stop_on_signal, tg.cancel_scope)

            async def report(agent: Agent) -> None:
                nonlocal pulls
                async for done in agent.completed_requests():
                    print(f"done {done.request_id} rank {agent.rank} by {done.peer_name}", flush=True)
                    pulls += 1
                    if args.max_pulls and pulls >= args.max_pulls:
                        tg.cancel_scope.cancel()

            for agent in agents:
                tg.start_soon(report, agent)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """SIGINT/SIGTERM end serving cleanly (the agents close their transports)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("serve: stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return

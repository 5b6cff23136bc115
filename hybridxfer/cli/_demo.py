"""``hybridxfer demo``: the main job — a verified hybrid transfer between real processes.

Why processes and not tasks: the point is to show what an engine gets — P and D ranks
that share nothing but the wire. ``demo`` is a conductor: it starts one ``serve`` process
per P rank and one ``pull --events`` process per D rank (the same commands a user runs on
two hosts), releases every D rank at once, draws a progress bar from their events, and
prints one table row per D rank. Exit 1 if any D rank saw a wrong byte or failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from hybridxfer._child import ChildLines
from hybridxfer.errors import TransferError

__all__ = ["add_parser", "default_layout"]


def default_layout() -> Path:
    """The shipped Nemotron-3-Nano layout, found by model id (checkout or installed wheel)."""
    from hybridxfer.cli._layouts import DEFAULT_MODEL, resolve_layout

    return resolve_layout(DEFAULT_MODEL)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="P and D ranks as processes on loopback: move, verify, report",
                       description="Move a hybrid model's cache from P ranks to D ranks (separate processes), "
                                   "verify every byte and print a summary.")
    p.add_argument("--layout", metavar="FILE|MODEL",
                   help="layout file, or the model id of a shipped layout (default nemotron-3-nano-30b-a3b)")
    p.add_argument("--src-tp", type=int, default=1, metavar="P", help="TP size of P: P ranks, one process each (default 1)")
    p.add_argument("--dst-tp", type=int, default=2, metavar="D", help="TP size of D: D ranks, one process each (default 2)")
    p.add_argument("--transport", default="tcp", metavar="NAME", help="default tcp")
    p.add_argument("--tokens", type=int, default=8192, metavar="N", help="tokens per request (default 8192)")
    p.add_argument("--requests", type=int, default=1, metavar="K", help="concurrent requests (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    from hybridxfer.cli._tls import add_tls_arguments

    add_tls_arguments(p)  # passed on to every serve and pull process
    from hybridxfer.cli import _demo_transformers

    _demo_transformers.add_arguments(p)
    p.set_defaults(handler=_run)


def _cli(verbose: int, *argv: object) -> list[str]:
    return [sys.executable, "-m", "hybridxfer.cli", *(["-" + "v" * verbose] if verbose else []), *map(str, argv)]


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli._serve import check_tls_transport
    from hybridxfer.cli._tls import tls_from_args
    from hybridxfer.cli._usage import UsageError

    tls = tls_from_args(args)  # checked here, once, before any process starts
    if args.engine == "transformers":  # a real model's cache: hybridxfer.cli._demo_transformers
        if tls is not None:
            raise UsageError("--tls-* apply to the synthetic demo; --engine transformers runs without TLS")
        from hybridxfer.cli import _demo_transformers

        return _demo_transformers.run(args)
    check_tls_transport(args.transport, tls)
    from hybridxfer.cli._progress import ProgressBar

    from hybridxfer.cli._layouts import resolve_layout
    from hybridxfer.cli._limits import MAX_DEMO_RANKS, MAX_REQUESTS, MAX_TOKENS

    if args.src_tp < 1 or args.dst_tp < 1 or args.src_tp + args.dst_tp > MAX_DEMO_RANKS:
        raise UsageError(f"--src-tp and --dst-tp must be >= 1, and at most {MAX_DEMO_RANKS} together "
                         "(one process per rank)")
    if not 1 <= args.tokens <= MAX_TOKENS or not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--tokens must lie in [1, {MAX_TOKENS}] and --requests in [1, {MAX_REQUESTS}]")
    if not 0 < args.timeout < float("inf"):
        raise UsageError("--timeout must be a positive number of seconds")
    layout = resolve_layout(args.layout) if args.layout else default_layout()
    model = _check_fits(layout, args)  # fail fast, in this process, on a bad file or too little memory
    bar = ProgressBar(enabled=None if not args.json else False)
    started = time.perf_counter()
    try:
        ranks = anyio.run(_conduct, args, layout, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - started
    total = sum(r["bytes"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    verified = all(r["verified"] for r in ranks)
    doc = {"model": model, "layout": str(layout), "src_tp": args.src_tp, "dst_tp": args.dst_tp,
           "transport": args.transport, "tls": tls is not None, "tokens": args.tokens, "requests": args.requests, "bytes": total,
           "verified": verified, "seconds": seconds, "gbps": total / seconds / 1e9 if seconds else 0.0,
           "wall_seconds": wall, "ranks": ranks}
    if args.json:
        print(json.dumps(doc))
    else:
        from hybridxfer.cli._table import demo_table

        print(demo_table(doc))
    return 0 if verified else 1


def _check_fits(layout: Path, args: argparse.Namespace) -> str:
    """Load the layout and check that every P and D rank's memory fits here at once; the model id."""
    from hybridxfer.cli._limits import check_memory, working_set
    from hybridxfer.layout import load_layout
    from hybridxfer.synthetic import blocks_for

    loaded = load_layout(layout)
    need = sum(working_set(loaded.for_rank(tp, r, num_blocks=blocks_for(
        loaded, tp, args.tokens, requests=args.requests, rank=r)).total_bytes, args.requests)
        for tp in (args.src_tp, args.dst_tp) for r in range(tp))
    check_memory(need, f"demo of {args.requests} x {args.tokens} tokens on {args.src_tp} P + {args.dst_tp} D ranks")
    return loaded.model


async def _conduct(args: argparse.Namespace, layout: Path, bar: Any) -> list[dict[str, Any]]:
    """Start P ranks, then D ranks; release the D ranks together; collect their results."""
    from hybridxfer.cli._tls import tls_argv

    children: list[ChildLines] = []
    phase = "starting P ranks"
    totals: dict[int, int] = {}
    moved: dict[int, int] = {}

    def draw(force: bool = False) -> None:
        bar.update(sum(moved.values()), sum(totals.values()), phase, force=force)

    async def spawn(argv: list[str], what: str) -> ChildLines:
        def exited(status: int | None) -> Exception:
            how = f"exited with status {status}" if status is not None else "stopped"
            return TransferError(f"{what} {how} before finishing (its error is above)")

        process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        child = ChildLines(process, exited)
        children.append(child)
        return child

    try:
        with anyio.fail_after(args.timeout):
            draw(force=True)
            p_ranks = [await spawn(_cli(args.verbose, "serve", layout, "--tp", args.src_tp, "--rank", r,
                                        "--listen", "127.0.0.1:0", "--transport", args.transport,
                                        "--tokens", args.tokens, "--requests", args.requests, *tls_argv(args)),
                                   f"P rank {r}")
                       for r in range(args.src_tp)]
            addresses = []
            for p in p_ranks:
                while not (line := await p.line()).startswith("listening on "):
                    pass
                addresses.append(line.removeprefix("listening on ").strip())
            phase = "starting D ranks"
            draw(force=True)
            d_ranks = [await spawn(_cli(args.verbose, "pull", layout, "--src-tp", args.src_tp, "--dst-tp", args.dst_tp,
                                        "--rank", d, "--connect", *addresses, "--tokens", args.tokens,
                                        "--requests", args.requests, "--transport", args.transport,
                                        "--timeout", args.timeout, "--events", *tls_argv(args)), f"D rank {d}")
                       for d in range(args.dst_tp)]
            results: dict[int, dict[str, Any]] = {}

            async def follow(d: int, child: ChildLines, *, task_status: anyio.abc.TaskStatus[None]) -> None:
                nonlocal phase
                while True:
                    kind, _, rest = (await child.line()).removeprefix("EV ").partition(" ")
                    if kind == "total":
                        totals[d] = int(rest)
                    elif kind == "ready":
                        task_status.started()
                    elif kind == "bytes":
                        moved[d] = moved.get(d, 0) + int(rest)
                    elif kind == "phase" and rest in ("transferring", "verifying"):
                        phase = rest
                    elif kind == "result":
                        results[d] = json.loads(rest)
                        return
                    draw()

            async with anyio.create_task_group() as tg:
                for d, child in enumerate(d_ranks):  # every D rank planned and waiting
                    await tg.start(follow, d, child)
                phase = "transferring"
                for child in d_ranks:
                    assert child.process.stdin is not None
                    await child.process.stdin.send(b"go\n")
            draw(force=True)
            return [results[d] for d in range(args.dst_tp)]
    except TimeoutError:
        raise TransferError(f"demo did not finish within {args.timeout} s") from None
    finally:
        with anyio.CancelScope(shield=True):
            for child in children:
                if child.process.returncode is None:
                    child.process.terminate()
            for child in children:
                with anyio.move_on_after(5):
                    await child.process.wait()
                if child.process.returncode is None:
                    child.process.kill()
                await child.process.aclose()

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

_DEFAULT_MODEL = "nemotron-3-nano-30b-a3b"


def default_layout() -> Path:
    """The shipped Nemotron-3-Nano layout (repository checkout or installed data)."""
    here = Path(__file__).resolve().parents[2] / "layouts" / f"{_DEFAULT_MODEL}.toml"
    return here


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="P and D ranks as processes on loopback: move, verify, report",
                       description="Move a hybrid model's cache from P ranks to D ranks (separate processes), "
                                   "verify every byte and print a summary.")
    p.add_argument("--layout", metavar="FILE", help=f"layout file (default layouts/{_DEFAULT_MODEL}.toml)")
    p.add_argument("--src-tp", type=int, default=1, metavar="P", help="P ranks (default 1)")
    p.add_argument("--dst-tp", type=int, default=2, metavar="D", help="D ranks (default 2)")
    p.add_argument("--transport", default="tcp", metavar="NAME", help="default tcp")
    p.add_argument("--tokens", type=int, default=8192, metavar="N", help="tokens per request (default 8192)")
    p.add_argument("--requests", type=int, default=1, metavar="K", help="concurrent requests (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    p.set_defaults(handler=_run)


def _cli(verbose: int, *argv: object) -> list[str]:
    return [sys.executable, "-m", "hybridxfer.cli", *(["-" + "v" * verbose] if verbose else []), *map(str, argv)]


def _run(args: argparse.Namespace) -> int:
    from hybridxfer.cli import UsageError
    from hybridxfer.cli._progress import ProgressBar

    if args.src_tp < 1 or args.dst_tp < 1 or args.tokens < 1 or args.requests < 1:
        raise UsageError("--src-tp, --dst-tp, --tokens and --requests must be >= 1")
    layout = Path(args.layout) if args.layout else default_layout()
    from hybridxfer.layout import load_layout

    model = load_layout(layout).model  # fail fast, in this process, on a bad file
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
           "transport": args.transport, "tokens": args.tokens, "requests": args.requests, "bytes": total,
           "verified": verified, "seconds": seconds, "gbps": total / seconds / 1e9 if seconds else 0.0,
           "wall_seconds": wall, "ranks": ranks}
    if args.json:
        print(json.dumps(doc))
    else:
        from hybridxfer.cli._table import demo_table

        print(demo_table(doc))
    return 0 if verified else 1


async def _conduct(args: argparse.Namespace, layout: Path, bar: Any) -> list[dict[str, Any]]:
    """Start P ranks, then D ranks; release the D ranks together; collect their results."""
    children: list[ChildLines] = []
    phase = "starting P ranks"
    totals: dict[int, int] = {}
    moved: dict[int, int] = {}

    def draw(force: bool = False) -> None:
        bar.update(sum(moved.values()), sum(totals.values()), phase, force=force)

    async def spawn(argv: list[str], what: str) -> ChildLines:
        def exited(status: int | None) -> Exception:
            return TransferError(f"{what} exited (status {status}) before finishing")

        process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        child = ChildLines(process, exited)
        children.append(child)
        return child

    try:
        with anyio.fail_after(args.timeout):
            draw(force=True)
            p_ranks = [await spawn(_cli(args.verbose, "serve", layout, "--tp", args.src_tp, "--rank", r,
                                        "--listen", "127.0.0.1:0", "--transport", args.transport,
                                        "--tokens", args.tokens, "--requests", args.requests), f"P rank {r}")
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
                                        "--timeout", args.timeout, "--events"), f"D rank {d}")
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

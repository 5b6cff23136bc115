"""A serving (P) agent in its own process, for tests that kill or restart a peer.

Run as ``python -m hybridxfer.testing._peer_process --transport NAME --options JSON
--name N --size BYTES --seed S``. It registers one region ``"src"`` filled with
:func:`pattern_bytes` (deterministic, so the reader can verify every byte without a
copy of the data), prints ``META <hex agent metadata>``, then one ``DONE <request_id>
<peer>`` line per completed request, and exits when its stdin closes. Why a process: a
SIGKILLed peer is the failure engines actually see, and threads cannot fake it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import anyio
import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from hybridxfer.execute import Agent

__all__ = ["StaticLayout", "announce_and_serve", "main", "pattern_bytes"]

_CHUNK = 1 << 20


def pattern_bytes(seed: int, size: int) -> npt.NDArray[np.uint8]:
    """Deterministic, position-dependent bytes: each MiB chunk differs (65,536 chunks)."""
    base = np.random.default_rng(seed).integers(0, 256, _CHUNK, dtype=np.uint8)
    out = np.empty(size, dtype=np.uint8)
    for i, start in enumerate(range(0, size, _CHUNK)):
        n = min(_CHUNK, size - start)
        np.bitwise_xor(base[:n], np.uint8(i & 0xFF), out=out[start : start + n])
        out[start : start + n] += np.uint8((i >> 8) & 0xFF)
    return out


@attrs.frozen
class StaticLayout:
    """A stand-in layout carrying only what the handshake compares (tests and peers)."""

    digest: str
    model_digest: str


async def _serve(args: argparse.Namespace) -> None:
    from hybridxfer.execute import Agent

    options = json.loads(args.options)
    memory = pattern_bytes(args.seed, args.size)
    layout = StaticLayout(f"layout-rank{args.rank}", args.model_digest)
    async with Agent(args.name, transport=args.transport, transport_options=options, role="prefill",
                     rank=args.rank, tp_size=args.tp_size, layout=layout) as agent:
        await agent.register("src", memory)
        await announce_and_serve(agent)


async def announce_and_serve(agent: Agent) -> None:
    """Print ``META <hex>``, then ``DONE <request> <peer>`` per completed request, until
    stdin closes (the parent's way to stop us without a signal)."""
    print("META", agent.metadata().hex(), flush=True)
    async with anyio.create_task_group() as tg:

        async def report() -> None:
            async for done in agent.completed_requests():
                print("DONE", done.request_id, done.peer_name, flush=True)

        tg.start_soon(report)
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridxfer.testing._peer_process")
    parser.add_argument("--transport", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", default="peer-process")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--tp-size", type=int, default=1)
    parser.add_argument("--model-digest", default="conformance-model")
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args(argv)
    anyio.run(_serve, args, backend=args.backend)


if __name__ == "__main__":
    main()

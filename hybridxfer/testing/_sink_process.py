"""A write target in its own process: a bare transport whose one region others write into.

Run as ``python -m hybridxfer.testing._sink_process --transport NAME --options JSON
--size BYTES``. It registers one region ``"sink"`` of ``size`` bytes, every byte
:data:`~hybridxfer.testing._checks.SENTINEL`, prints ``META <hex transport metadata>``,
then answers each ``DIGEST`` line on stdin with ``DIGEST <sha256 of the region>`` and
exits when stdin closes. Why a bare transport and not an agent: the write checks hold the
*transport* to its contract, and the digest lets the writing process check every byte it
wrote (and every byte it must not have touched) without reading them back through the
transport under test. Why a process: a SIGKILLed write target is what push mode meets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import anyio
import numpy as np

from hybridxfer.testing._checks import SENTINEL, region_of
from hybridxfer.transport.registry import open_transport

__all__ = ["main"]


async def _serve(args: argparse.Namespace) -> None:
    sink = np.full(args.size, SENTINEL, np.uint8)
    options = json.loads(args.options)
    async with open_transport(args.transport, name=args.name, **options) as transport:
        await transport.register([region_of("sink", sink)])
        print("META", transport.local_metadata().hex(), flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            if line.strip() == "DIGEST":
                print("DIGEST", hashlib.sha256(sink.tobytes()).hexdigest(), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridxfer.testing._sink_process")
    parser.add_argument("--transport", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", default="sink-process")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args(argv)
    anyio.run(_serve, args, backend=args.backend)


if __name__ == "__main__":
    main()

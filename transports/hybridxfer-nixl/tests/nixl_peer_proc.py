"""A P-side process for the NIXL tests: serves a patterned region, echoes notifications.

Run as ``python nixl_peer_proc.py SIZE [SIZE ...]``. It prints ``META <hex>`` once its
regions are registered, then obeys line commands on stdin:

``CONNECT <hex>`` connect to a D peer; ``NOTIFY <hex>`` notify that peer;
``WAIT_NOTE`` print the next notification as ``NOTE <peer> <hex>``; ``EXIT``.
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread
import numpy as np

from hybridxfer.transport import MemoryRegion, PeerHandle

from hybridxfer_nixl import NixlTransport


def pattern(size: int, seed: int) -> np.ndarray:
    idx = np.arange(size, dtype=np.uint64)
    return ((idx * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(251)).astype(np.uint8)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(sizes: list[int]) -> None:
    arrays = [pattern(size, seed) for seed, size in enumerate(sizes)]
    async with NixlTransport() as transport:
        await transport.register(
            [MemoryRegion(f"r{i}", int(a.ctypes.data), int(a.nbytes)) for i, a in enumerate(arrays)]
        )
        emit("META " + transport.local_metadata().hex())
        peer: PeerHandle | None = None
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line or line[0] == "EXIT":
                return
            if line[0] == "CONNECT":
                peer = await transport.connect(bytes.fromhex(line[1]))
                emit("CONNECTED")
            elif line[0] == "NOTIFY" and peer is not None:
                await transport.notify(peer, bytes.fromhex(line[1]))
                emit("NOTIFIED")
            elif line[0] == "WAIT_NOTE":
                note = await transport.next_notification()
                emit(f"NOTE {note.peer_name} {note.message.hex()}")


if __name__ == "__main__":
    anyio.run(main, [int(s) for s in sys.argv[1:]])

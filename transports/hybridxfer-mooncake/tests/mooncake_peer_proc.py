"""A P-side process for the Mooncake tests: serves one patterned region.

``python mooncake_peer_proc.py plugin SIZE`` serves it through a ``MooncakeTransport``
and prints ``META <hex envelope>``; ``python mooncake_peer_proc.py raw SIZE`` serves it
through a bare Mooncake ``TransferEngine`` (no hybridxfer at all) and prints ``RAW
<host:port> <address>``. Then both obey stdin lines: ``CHECK <offset> <length> <seed>``
prints ``CHECK 1`` when those bytes equal ``pattern(length, seed)`` (``CHECK 0``
otherwise), ``WAIT_NOTE`` (plugin) prints the next notification as ``NOTE <peer> <hex>``,
``EXIT`` (or EOF) exits.
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt


def pattern(size: int, seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def check(memory: npt.NDArray[np.uint8], words: list[str]) -> None:
    offset, length, seed = map(int, words[1:4])
    emit(f"CHECK {int(np.array_equal(memory[offset:offset + length], pattern(length, seed)))}")


async def serve_plugin(size: int) -> None:
    from hybridxfer.transport import MemoryRegion

    from hybridxfer_mooncake import MooncakeTransport

    memory = pattern(size, 0)
    async with MooncakeTransport(name="mooncake-peer") as transport:
        await transport.register([MemoryRegion("src", int(memory.ctypes.data), int(memory.nbytes))])
        emit("META " + transport.local_metadata().hex())
        while True:
            words = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if not words or words[0] == "EXIT":
                return
            if words[0] == "CHECK":
                check(memory, words)
            elif words[0] == "WAIT_NOTE":
                note = await transport.next_notification()
                emit(f"NOTE {note.peer_name} {note.message.hex()}")


def serve_raw(size: int) -> None:
    from mooncake.engine import TransferEngine  # type: ignore[import-untyped]

    memory = pattern(size, 0)
    engine = TransferEngine()
    if engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("initialize failed")
    if engine.register_memory(int(memory.ctypes.data), int(memory.nbytes)) != 0:
        raise SystemExit("register_memory failed")
    emit(f"RAW 127.0.0.1:{engine.get_rpc_port()} {int(memory.ctypes.data)}")
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "EXIT":
            return
        if words[0] == "CHECK":
            check(memory, words)


if __name__ == "__main__":
    if sys.argv[1] == "plugin":
        anyio.run(serve_plugin, int(sys.argv[2]))
    else:
        serve_raw(int(sys.argv[2]))

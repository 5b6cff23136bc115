"""A P-side process for the UCXX tests: serves one patterned region.

Run as ``python ucxx_peer_proc.py SIZE``; prints ``META <hex>``, then ``NOTE <peer>
<hex>`` for each notification it receives; exits when stdin closes.
"""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from hybridxfer.transport import MemoryRegion

from hybridxfer_ucxx import UcxxTransport


def pattern(size: int, seed: int) -> npt.NDArray[np.uint8]:
    idx = np.arange(size, dtype=np.uint64)
    return ((idx * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(251)).astype(np.uint8)


async def main(size: int) -> None:
    source = pattern(size, 0)
    async with UcxxTransport(name="ucxx-peer") as transport:
        await transport.register([MemoryRegion("r0", int(source.ctypes.data), size)])
        print("META", transport.local_metadata().hex(), flush=True)
        async with anyio.create_task_group() as tg:

            async def echo_notes() -> None:
                while True:
                    note = await transport.next_notification()
                    print("NOTE", note.peer_name, note.message.hex(), flush=True)

            tg.start_soon(echo_notes)
            await anyio.to_thread.run_sync(sys.stdin.read)
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]))

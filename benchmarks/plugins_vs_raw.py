"""hybridxfer-nixl / hybridxfer-ucxx end to end against their raw ceilings, same bytes.

``python benchmarks/plugins_vs_raw.py [total_MiB] [repeats]``: for each piece size, times
``transport.read`` of ``total`` bytes cut into permuted pieces (the exact ranges
``raw_nixl.pieces`` produces) from a peer process, then the raw NIXL READ / raw UCXX
send-recv of the same ranges, and prints medians and the ratio. Raw and plugin run
back to back so both see the same machine load.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import raw_nixl  # noqa: E402
import raw_ucxx  # noqa: E402

from hybridxfer.transport import MemoryRegion, ReadBatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEERS = {
    "nixl": ROOT / "transports/hybridxfer-nixl/tests/nixl_peer_proc.py",
    "ucxx": ROOT / "transports/hybridxfer-ucxx/tests/ucxx_peer_proc.py",
}


async def plugin_times(kind: str, total: int, piece: int, repeats: int) -> list[float]:
    if kind == "nixl":
        from hybridxfer_nixl import NixlTransport as Factory
        transport = Factory()
    else:
        from hybridxfer_ucxx import UcxxTransport

        transport = UcxxTransport()  # type: ignore[assignment]
    proc = subprocess.Popen([sys.executable, str(PEERS[kind]), str(total)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        while not (line := proc.stdout.readline()).startswith("META"):
            pass
        dst = np.zeros(total, dtype=np.uint8)
        src_off, dst_off, lengths = raw_nixl.pieces(total, piece)
        zeros = np.zeros(len(lengths), dtype=np.int64)
        batch = ReadBatch(zeros, src_off, zeros, dst_off, lengths)
        async with transport:
            await transport.register([MemoryRegion("d", dst.ctypes.data, total)])
            peer = await transport.connect(bytes.fromhex(line.split()[1]))
            times = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                await transport.read(peer, batch)
                if i:
                    times.append(time.perf_counter() - t0)
        return times
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def main() -> None:
    total = (int(sys.argv[1]) if len(sys.argv) > 1 else 256) << 20
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    for kind, raw in (("nixl", raw_nixl.measure), ("ucxx", raw_ucxx.measure)):
        for piece in (64 << 10, 1 << 20, 16 << 20):
            raw_t = statistics.median(raw(total, piece, repeats))
            ours = statistics.median(anyio.run(plugin_times, kind, total, piece, repeats))
            print(f"{kind} piece {piece >> 10:>6} KiB: raw {total / raw_t / 1e9:5.2f} GB/s  "
                  f"hybridxfer {total / ours / 1e9:5.2f} GB/s  ratio {raw_t / ours:4.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Raw UCXX tag send/recv ceiling between two processes on this host (no hybridxfer).

``measure(total_bytes, piece_bytes, repeats)`` starts a sending process; this process
receives ``total_bytes`` cut into ``piece_bytes`` tag messages straight into a
preallocated buffer (source pieces permuted with a fixed seed, as in ``raw_nixl``).
Both sides use worker-address endpoints with error handling off and ``blocking``
progress — the fastest combination measured on 2 cores. Each figure is seconds from
asking the sender to go until every receive completed; one warm-up run comes first.

Run directly for a quick table: ``python benchmarks/raw_ucxx.py [total_MiB]``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import numpy as np

__all__ = ["measure"]

_TAG = 0x5EED


def _pieces(total_bytes: int, piece_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    n = total_bytes // piece_bytes
    perm = np.random.default_rng(0).permutation(n).astype(np.int64)
    return perm * piece_bytes, np.arange(n, dtype=np.int64) * piece_bytes


async def _serve(total_bytes: int, piece_bytes: int) -> None:
    import ucxx

    ucxx.init(progress_mode="blocking")
    src = np.arange(total_bytes, dtype=np.uint64).astype(np.uint8)
    src_off, _ = _pieces(total_bytes, piece_bytes)
    loop = asyncio.get_running_loop()
    address = await loop.run_in_executor(None, sys.stdin.readline)
    ep = await ucxx.create_endpoint_from_worker_address(
        ucxx.get_ucx_address_from_buffer(bytes.fromhex(address.strip())), endpoint_error_handling=False
    )
    print("READY", flush=True)
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "GO":
        await asyncio.gather(
            *(ep.send(src[o : o + piece_bytes], tag=_TAG, force_tag=True) for o in src_off.tolist())
        )
    ep.abort()


async def _measure(total_bytes: int, piece_bytes: int, repeats: int) -> list[float]:
    import ucxx

    try:
        ucxx.init(progress_mode="blocking")
    except RuntimeError:
        pass
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(total_bytes), str(piece_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "UCXPY_PROGRESS_MODE": "blocking"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        ucxx.continuous_ucx_progress()
        # An endpoint to the sender is not needed to receive; the worker matches tags.
        proc.stdin.write(bytes(ucxx.get_worker_address().tobytes()).hex() + "\n")
        proc.stdin.flush()
        while (await loop.run_in_executor(None, proc.stdout.readline)).strip() != "READY":
            pass
        dst = np.zeros(total_bytes, dtype=np.uint8)
        src_off, dst_off = _pieces(total_bytes, piece_bytes)
        times = []
        for i in range(repeats + 1):
            receives = [ucxx.recv(dst[o : o + piece_bytes], tag=_TAG) for o in dst_off.tolist()]
            t0 = time.perf_counter()
            proc.stdin.write("GO\n")
            proc.stdin.flush()
            await asyncio.gather(*receives)
            if i:
                times.append(time.perf_counter() - t0)
        expected = np.arange(total_bytes, dtype=np.uint64).astype(np.uint8)
        n = len(src_off)
        if not np.array_equal(dst[: n * piece_bytes].reshape(n, piece_bytes), expected[src_off[:, None] + np.arange(piece_bytes)]):
            raise RuntimeError("raw UCXX moved the wrong bytes")
        return times
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def measure(total_bytes: int, piece_bytes: int, repeats: int) -> list[float]:
    """Seconds per repeat; runs its own asyncio loop (call it outside a running loop)."""
    return asyncio.run(_measure(total_bytes, piece_bytes, repeats))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(_serve(int(sys.argv[2]), int(sys.argv[3])))
    else:
        total = (int(sys.argv[1]) if len(sys.argv) > 1 else 256) << 20
        for piece in (64 << 10, 1 << 20, 16 << 20):
            ts = sorted(measure(total, piece, 7))
            print(f"piece {piece:>9}: median {total / ts[len(ts) // 2] / 1e9:6.2f} GB/s  "
                  f"[{total / ts[-1] / 1e9:.2f}-{total / ts[0] / 1e9:.2f}]")

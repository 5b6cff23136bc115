"""Raw NIXL READ ceiling between two processes on this host (no hybridxfer involved).

``measure(total_bytes, piece_bytes, repeats)`` starts a serving process that registers
``total_bytes`` of host memory, loads its agent metadata, and times ``repeats`` READs
of the whole buffer cut into ``piece_bytes`` descriptors (source pieces permuted with a
fixed seed, destination in order — the same shape hybridxfer's benchmark reads). One
prepared handle is re-posted, NIXL's progress thread is off and this process drives
progress, which is the fastest configuration measured on 2 cores. Each returned figure
is seconds from ``transfer()`` to ``DONE``; one untimed warm-up READ comes first.

Run directly for a quick table: ``python benchmarks/raw_nixl.py [total_MiB]``.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

__all__ = ["measure", "pieces"]


def pieces(total_bytes: int, piece_bytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src offsets, dst offsets, lengths) of the benchmark read: permuted source pieces."""
    n = total_bytes // piece_bytes
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    lengths = np.full(n, piece_bytes, dtype=np.int64)
    return perm * piece_bytes, np.arange(n, dtype=np.int64) * piece_bytes, lengths


def _serve(total_bytes: int) -> None:
    from nixl_cu12._api import nixl_agent, nixl_agent_config

    agent = nixl_agent("raw-P", nixl_agent_config(enable_prog_thread=False))
    src = np.arange(total_bytes, dtype=np.uint64).astype(np.uint8)
    agent.register_memory(np.array([[src.ctypes.data, total_bytes, 0]], dtype=np.uint64), "DRAM")
    sys.stdout.write(f"META {agent.get_agent_metadata().hex()} {src.ctypes.data}\n")
    sys.stdout.flush()
    import select

    while True:  # progress the target side until the parent closes stdin
        agent.get_new_notifs()
        ready, _, _ = select.select([sys.stdin], [], [], 0.0005)
        if ready and not sys.stdin.readline():
            return


def _read_line(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("raw NIXL server exited early")
        if line.startswith(prefix):
            return line.split()


def measure(total_bytes: int, piece_bytes: int, repeats: int) -> list[float]:
    from nixl_cu12._api import nixl_agent, nixl_agent_config

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(total_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _, meta, src_addr = _read_line(proc, "META ")
        agent = nixl_agent("raw-D", nixl_agent_config(enable_prog_thread=False))
        dst = np.zeros(total_bytes, dtype=np.uint8)
        agent.register_memory(np.array([[dst.ctypes.data, total_bytes, 0]], dtype=np.uint64), "DRAM")
        peer = agent.add_remote_agent(bytes.fromhex(meta))
        src_off, dst_off, lengths = pieces(total_bytes, piece_bytes)
        n = lengths.shape[0]
        remote = np.stack([int(src_addr) + src_off, lengths, np.zeros(n, np.int64)], 1).astype(np.uint64)
        local = np.stack([dst.ctypes.data + dst_off, lengths, np.zeros(n, np.int64)], 1).astype(np.uint64)
        handle = agent.initialize_xfer(
            "READ", agent.get_xfer_descs(local, "DRAM"), agent.get_xfer_descs(remote, "DRAM"), peer
        )
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            state = agent.transfer(handle)
            while state == "PROC":
                state = agent.check_xfer_state(handle)
            elapsed = time.perf_counter() - t0
            if state != "DONE":
                raise RuntimeError(f"raw NIXL READ failed: {state}")
            if i:
                times.append(elapsed)
        expected = np.arange(total_bytes, dtype=np.uint64).astype(np.uint8)
        view = dst[: n * piece_bytes].reshape(n, piece_bytes)
        if not np.array_equal(view, expected[src_off[:, None] + np.arange(piece_bytes)]):
            raise RuntimeError("raw NIXL READ moved the wrong bytes")
        agent.release_xfer_handle(handle)
        return times
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(int(sys.argv[2]))
    else:
        total = (int(sys.argv[1]) if len(sys.argv) > 1 else 256) << 20
        for piece in (4 << 10, 64 << 10, 1 << 20, 16 << 20):
            ts = sorted(measure(total, piece, 7))
            print(f"piece {piece:>9}: median {total / ts[len(ts) // 2] / 1e9:6.2f} GB/s  "
                  f"[{total / ts[-1] / 1e9:.2f}-{total / ts[0] / 1e9:.2f}]")

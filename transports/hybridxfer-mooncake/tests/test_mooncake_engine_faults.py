"""What the conformance suite found about Mooncake's engine itself, shown on the RAW engine.

No hybridxfer code runs here: a bare ``TransferEngine`` reads from (or writes to) a peer
process that serves a bare engine. Each test shows one fact the plugin is built around
(``hybridxfer_mooncake._link`` says how); docs/transports.md describes them. Where the
fact depends on timing, the test says so and is written so that it cannot flake: it
repeats the experiment on a fresh engine until the fault shows, a small bounded number
of times, with a margin of several orders of magnitude per attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from mooncake_harness import PeerProcess
from mooncake_peer_proc import pattern

Spawn = Callable[[str, int], PeerProcess]
MiB = 1 << 20
PIECE = 4096


@pytest.fixture
def engine() -> Iterator[Callable[[], Any]]:
    """Fresh raw engines on 127.0.0.1 (kept referenced until the test ends)."""
    from mooncake.engine import TransferEngine  # type: ignore[import-untyped]

    made: list[Any] = []

    def new() -> Any:
        e = TransferEngine()
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
        made.append(e)
        return e

    yield new
    made.clear()


def _pieces(e: Any, peer: PeerProcess, dst: np.ndarray, count: int, first: int = 0) -> int:
    """One batch READ of ``count`` 4 KiB pieces, in place."""
    rows = range(first, first + count)
    return int(e.batch_transfer_sync_read(peer.target, [int(dst.ctypes.data) + i * PIECE for i in rows],
                                          [peer.address + i * PIECE for i in rows], [PIECE] * count))


def test_one_batch_holds_at_most_the_lane_queue(spawn_peer: Spawn, engine: Callable[[], Any]) -> None:
    """1024 entries read exactly; 4096 in one batch fail ("TCP lane queue-full": the
    per-peer queue holds 1024 entries plus 1024 pending admissions). Deterministic."""
    peer = spawn_peer("raw", 16 * MiB)
    dst = np.zeros(16 * MiB, np.uint8)
    e = engine()
    assert e.register_memory(int(dst.ctypes.data), dst.nbytes) == 0
    assert _pieces(e, peer, dst, 1024) == 0
    assert np.array_equal(dst[:1024 * PIECE], pattern(16 * MiB, 0)[:1024 * PIECE])
    e2 = engine()  # a fresh engine, so nothing queued before can be the cause
    assert e2.register_memory(int(dst.ctypes.data), dst.nbytes) == 0
    assert _pieces(e2, peer, dst, 4096) < 0


def test_failed_batch_returns_while_its_entries_still_land(spawn_peer: Spawn, engine: Callable[[], Any]) -> None:
    """A batch whose first entry the peer rejects returns -1 at once, while its other
    entries go on writing local memory afterwards. Timing-dependent: the call returns in
    about a millisecond, the 96 MiB behind it take tens to hundreds of milliseconds, so
    "not all landed at return" holds by orders of magnitude; up to 3 attempts."""
    size = 96 * MiB
    peer = spawn_peer("raw", size)
    want = pattern(size, 0)
    third = size // 3
    outcomes = []
    for _ in range(3):
        dst = np.zeros(size, np.uint8)
        e = engine()
        assert e.register_memory(int(dst.ctypes.data), dst.nbytes) == 0
        base = int(dst.ctypes.data)
        rc = e.batch_transfer_sync_read(
            peer.target,
            [base, base, base + third, base + 2 * third],
            [peer.address + size + 4096, peer.address, peer.address + third, peer.address + 2 * third],
            [PIECE, third, third, third])
        at_return = bool(np.array_equal(dst, want))
        deadline = time.monotonic() + 20
        while not np.array_equal(dst, want) and time.monotonic() < deadline:
            time.sleep(0.05)
        outcomes.append((rc, at_return, bool(np.array_equal(dst, want))))
        if rc < 0 and not at_return and outcomes[-1][2]:
            break
    rc, at_return, later = outcomes[-1]
    assert rc < 0, outcomes
    assert not at_return and later, f"expected bytes to land after the failed call returned: {outcomes}"


def test_batch_write_is_applied_when_the_call_returns(spawn_peer: Spawn, engine: Callable[[], Any]) -> None:
    """8 MiB batch WRITEs (8 x 1 MiB), each checked by the memory's owner right after
    the call returned: every byte matches in every trial (the acknowledged "v2" TCP
    framing completes a WRITE only once the receiver applied it). hybridxfer only READs;
    this settles the write question for this engine version."""
    peer = spawn_peer("raw", 8 * MiB)
    e = engine()
    buf = np.zeros(8 * MiB, np.uint8)
    assert e.register_memory(int(buf.ctypes.data), buf.nbytes) == 0
    for trial in range(20):
        seed = 100 + trial
        buf[:] = pattern(8 * MiB, seed)
        rc = e.batch_transfer_sync_write(peer.target, [int(buf.ctypes.data) + i * MiB for i in range(8)],
                                         [peer.address + i * MiB for i in range(8)], [MiB] * 8)
        assert rc == 0
        assert peer.holds(0, 8 * MiB, seed), f"trial {trial}: the owner saw other bytes"


def test_a_call_given_up_on_still_writes_later(spawn_peer: Spawn, engine: Callable[[], Any]) -> None:
    """The negative control of the plugin's abandonment test: a raw READ to a SIGSTOPped
    peer cannot be cancelled; give up on it, resume the peer, and the call still writes
    its destination. Deterministic: the stopped peer cannot answer before SIGCONT, and the
    engine waits 30 s for progress."""
    size = 1024 * PIECE
    peer = spawn_peer("raw", size)
    dst = np.zeros(size, np.uint8)
    e = engine()
    assert e.register_memory(int(dst.ctypes.data), dst.nbytes) == 0
    assert _pieces(e, peer, dst, 1) == 0  # handshake done while the peer runs
    dst[:] = 0
    peer.stop()
    result: list[int] = []
    call = threading.Thread(target=lambda: result.append(_pieces(e, peer, dst, 1024)), daemon=True)
    call.start()
    call.join(0.5)
    assert call.is_alive() and not dst.any()  # we give up here; the call goes on
    peer.resume()
    call.join(20)
    assert result == [0]
    assert np.array_equal(dst, pattern(size, 0)), "the call given up on did not write (fault gone?)"

"""Fixtures for the NIXL plugin tests: real P processes serving patterned memory."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from nixl_harness import PeerProcess


@pytest.fixture
def spawn_peer() -> Iterator[Callable[[list[int]], PeerProcess]]:
    """Start P processes; each is stopped (SIGCONT first, then EXIT or SIGKILL) afterwards."""
    started: list[PeerProcess] = []

    def spawn(sizes: list[int]) -> PeerProcess:
        peer = PeerProcess(sizes)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        if peer.proc.poll() is None:
            os.kill(peer.pid, signal.SIGCONT)
        peer.close()

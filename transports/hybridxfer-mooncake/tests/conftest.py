"""Fixtures for the Mooncake plugin tests: real peer processes, every engine on loopback.

``MC_TCP_BIND_ADDRESS`` is set before any engine starts, so the engines of this process
and of the peer processes it starts (which inherit the environment) listen on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

os.environ["MC_TCP_BIND_ADDRESS"] = "127.0.0.1"

from mooncake_harness import PeerProcess  # noqa: E402

Spawn = Callable[[str, int], PeerProcess]


@pytest.fixture
def spawn_peer() -> Iterator[Spawn]:
    """Start peer processes; each is resumed and stopped (or killed) afterwards."""
    started: list[PeerProcess] = []

    def spawn(mode: str, size: int) -> PeerProcess:
        peer = PeerProcess(mode, size)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        peer.close()

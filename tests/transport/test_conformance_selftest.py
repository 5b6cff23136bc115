"""The conformance suite must fail on deliberately broken transports."""

from __future__ import annotations

import ctypes
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import pytest

from hybridxfer.testing import _checks as checks
from hybridxfer.testing.checker import ConformanceFailure, check_transport
from hybridxfer.transport import Descriptors, PeerHandle
from hybridxfer.transport.loopback import LoopbackPeer, LoopbackTransport


class DropsLastRow(LoopbackTransport):
    """Silently skips the last descriptor of every read."""

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        await super().read(peer, batch.slice(0, max(0, len(batch) - 1)))


class NeverNotifies(LoopbackTransport):
    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        await anyio.lowlevel.checkpoint()


class NotifiesTwice(LoopbackTransport):
    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        await super().notify(peer, message)
        await super().notify(peer, message)


class NoBoundsCheck(LoopbackTransport):
    """Copies whatever is asked for (within the test's own allocations) without checking."""

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        assert isinstance(peer, LoopbackPeer)
        src, dst = peer.target.regions, self.regions
        for sr, so, dr, do, ln in zip(*(c.tolist() for c in (batch.src_region, batch.src_offset,
                                                               batch.dst_region, batch.dst_offset, batch.length)), strict=True):
            if 0 <= sr < len(src) and 0 <= so and 0 < ln < 8192 and so + ln <= 8192 and do + ln <= dst[dr].length:
                ctypes.memmove(dst[dr].address + do, src[sr].address + so, ln)
        await anyio.lowlevel.checkpoint()


Check = Callable[[checks.TransportFactory], Awaitable[None]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (DropsLastRow, checks.check_single_small_read),
        (DropsLastRow, checks.check_many_tiny_descriptors),
        (NeverNotifies, checks.check_notification_exactly_once),
        (NotifiesTwice, checks.check_notification_exactly_once),
        (NoBoundsCheck, checks.check_out_of_bounds_refused),
    ],
)
async def test_suite_catches_broken_transport(broken: type[LoopbackTransport], check: Check) -> None:
    with anyio.fail_after(30):
        with pytest.raises(ConformanceFailure):
            await check(lambda name: broken(name=name))


@pytest.mark.anyio
async def test_checker_reports_failures_without_pytest() -> None:
    with anyio.fail_after(60):
        results = await check_transport("loopback", factory=lambda n: DropsLastRow(name=n), cross_process=False)
    failed = {r.name for r in results if not r.passed}
    assert {"single_small_read", "many_tiny_descriptors"} <= failed
    assert "zero_length" not in failed
    assert np.all([r.seconds >= 0 for r in results])


@pytest.fixture
def anyio_backend() -> str:
    # Broken-transport detection does not depend on the event loop; keep this file fast.
    return "asyncio"

"""``DelegatingTransport``: a wrapper forwards the whole contract to the transport it wraps.

The public conformance suite runs against the byte-counting wrapper (a
``DelegatingTransport`` overriding only ``read``, here splitting every read into small
pieces) over loopback; the other tests check each forwarded member and that the counting
wrapper reports exactly the bytes that landed, after they landed.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import ClosedTransportError
from hybridxfer.execute import CountingTransport
from hybridxfer.testing.conformance import InProcessConformanceTests
from hybridxfer.transport import DelegatingTransport, MemoryRegion, Transport
from hybridxfer.transport.registry import open_transport


class TestCountingTransportConformance(InProcessConformanceTests):
    def transport_factory(self, name: str) -> Transport:
        return CountingTransport(open_transport("loopback", name=name), lambda n: None, step_bytes=1000)


def _region(name: str, arr: np.ndarray) -> MemoryRegion:
    return MemoryRegion(name, int(arr.ctypes.data), int(arr.nbytes))


@pytest.mark.anyio
async def test_every_member_forwards_and_closing_the_wrapper_closes_the_inner() -> None:
    inner_p, inner_d = open_transport("loopback", name="wp"), open_transport("loopback", name="wd")
    src = np.arange(4096, dtype=np.uint8)
    dst = np.zeros(4096, dtype=np.uint8)
    with anyio.fail_after(10):
        async with inner_p, DelegatingTransport(inner_d) as d:
            assert d.name == inner_d.name == "loopback"
            assert d.capabilities == inner_d.capabilities
            await inner_p.register([_region("src", src)])
            await d.register([_region("dst", dst)])
            assert d.local_metadata() == inner_d.local_metadata()
            peer = await d.connect(inner_p.local_metadata())
            await d.read(peer, Descriptors(*(np.array([v], dtype=np.int64) for v in (0, 100, 0, 7, 1000))))
            assert np.array_equal(dst[7:1007], src[100:1100]) and not dst[:7].any() and not dst[1007:].any()
            await d.notify(peer, b"hello")
            note = await inner_p.next_notification()
            assert note.message == b"hello"
        with pytest.raises(ClosedTransportError):
            await inner_d.connect(inner_p.local_metadata())


@pytest.mark.anyio
async def test_counting_transport_reports_each_piece_once_it_landed() -> None:
    p, inner = open_transport("loopback", name="cp"), open_transport("loopback", name="cd")
    src = np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8)
    dst = np.zeros(10_000, dtype=np.uint8)
    seen: list[tuple[int, bool]] = []

    def landed(n: int) -> None:  # the bytes reported must already be in place
        seen.append((n, bool(np.array_equal(dst[:sum(k for k, _ in seen) + n], src[:sum(k for k, _ in seen) + n]))))

    rows = [(0, i * 1000, 0, i * 1000, 1000) for i in range(10)]
    batch = Descriptors(*(np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)))
    with anyio.fail_after(10):
        async with p, CountingTransport(inner, landed, step_bytes=2500) as d:
            await p.register([_region("src", src)])
            await d.register([_region("dst", dst)])
            peer = await d.connect(p.local_metadata())
            await d.read(peer, batch)
    assert np.array_equal(dst, src)
    assert sum(n for n, _ in seen) == 10_000 and all(ok for _, ok in seen)
    assert len(seen) == 4  # ceil(10000 / 2500) pieces of whole rows
    with pytest.raises(ValueError):
        CountingTransport(inner, landed, step_bytes=0)

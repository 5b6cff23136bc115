"""Request-scoped grants: the table alone, then enforced by a real TCP server between real peers."""

from __future__ import annotations

import logging

import anyio
import numpy as np
import pytest

from hybridxfer.errors import GrantRefusedError, InvalidArgumentError, TransferError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport import ByteRanges, GrantTable
from hybridxfer.transport.tcp import TcpTransport
from tests._pki import Pki, pki

__all__ = ["pki"]

SECRET = "grant-secret-never-logged"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ranges(*rows: tuple[int, int, int]) -> ByteRanges:
    cols = np.array(rows, dtype=np.int64).reshape(-1, 3).T
    return ByteRanges(cols[0], cols[1], cols[2])


def _ok(table: GrantTable, peer: str, *rows: tuple[int, int, int]) -> bool:
    r = _ranges(*rows)
    return table.authorize(peer, r.region, r.offset, r.length) is None


def test_merged_ranges_join_overlapping_and_touching_ones_per_region() -> None:
    merged = _ranges((1, 50, 10), (0, 10, 5), (0, 0, 10), (0, 12, 2), (0, 30, 0), (1, 40, 10), (0, 20, 4)).merged()
    assert list(zip(merged.region.tolist(), merged.offset.tolist(), merged.length.tolist(), strict=True)) == [
        (0, 0, 15), (0, 20, 4), (1, 40, 20)]


def test_rows_must_lie_inside_one_live_range_of_the_asking_peer() -> None:
    clock = Clock()
    table = GrantTable(clock=clock)
    table.grant("r1", "a", _ranges((0, 0, 100), (0, 100, 50), (2, 1000, 10)))
    table.grant("r2", "b", _ranges((0, 200, 100)))
    assert _ok(table, "a", (0, 0, 150), (2, 1000, 10), (0, 149, 1), (1, 5, 0))  # joined ranges, empty row
    assert not _ok(table, "a", (0, 140, 20))          # runs past the end
    assert not _ok(table, "a", (1, 0, 1))             # region never granted
    assert not _ok(table, "a", (0, 200, 10))          # b's request
    assert _ok(table, "b", (0, 200, 100))
    reason = table.authorize("a", *_cols((0, 0, 10), (2, 999, 2)))
    assert reason is not None and reason.startswith("grant refused: ")
    assert "row 1: region 2 bytes [999, 1001)" in reason and "'a'" in reason
    assert table.authorize("nobody", *_cols((0, 0, 1))) is not None
    assert table.revoke("r1") == 1 and not _ok(table, "a", (0, 0, 1)) and _ok(table, "b", (0, 250, 1))
    with pytest.raises(InvalidArgumentError):
        table.grant("r3", "a", _ranges((0, 0, 1)), lease=0)
    with pytest.raises(InvalidArgumentError):
        _ranges((0, -1, 4))


def test_leases_expire_on_the_tables_clock() -> None:
    clock = Clock()
    table = GrantTable(clock=clock)
    table.grant("short", "a", _ranges((0, 0, 10)), lease=5)
    table.grant("long", "a", _ranges((0, 10, 10)), lease=50)
    assert _ok(table, "a", (0, 0, 20))
    clock.now += 5
    assert not _ok(table, "a", (0, 0, 1)) and _ok(table, "a", (0, 10, 10))
    assert [g.request_id for g in table.grants("a")] == ["long"]
    clock.now += 100
    assert not _ok(table, "a", (0, 10, 1)) and table.grants() == ()


def _cols(*rows: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _ranges(*rows)
    return r.region, r.offset, r.length


@pytest.mark.anyio
async def test_tcp_server_serves_only_granted_ranges(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hybridxfer.transport.tcp.server")
    clock = Clock()
    src = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)
    dst_a = np.full(4096, 0xAA, dtype=np.uint8)
    dst_b = np.full(4096, 0xBB, dtype=np.uint8)
    with anyio.fail_after(30):
        async with (TcpTransport(name="p", secret=SECRET, require_grants=True, grants=GrantTable(clock=clock)) as p,
                    TcpTransport(name="d-a", secret=SECRET) as a, TcpTransport(name="d-b", secret=SECRET) as b):
            await p.register([region_of("src", src)])
            await a.register([region_of("dst", dst_a)])
            await b.register([region_of("dst", dst_b)])
            peer_a = await a.connect(p.local_metadata())
            peer_b = await b.connect(p.local_metadata())

            # grants required, none issued: refused, nothing sent, P names peer and range
            with pytest.raises(GrantRefusedError, match="no live grant"):
                await a.read(peer_a, batch(0, 0, 0, 0, 1024))
            assert (dst_a == 0xAA).all()
            assert "refused READ" in caplog.text and "'d-a'" in caplog.text and "bytes [0, 1024)" in caplog.text

            p.grants.grant("r1", "d-a", _ranges((0, 0, 1024), (0, 2048, 512)), lease=30)
            await a.read(peer_a, batch(0, [0, 2048], 0, [0, 2048], [1024, 512]))
            assert bytes(dst_a[:1024]) == bytes(src[:1024]) and bytes(dst_a[2048:2560]) == bytes(src[2048:2560])
            assert (dst_a[1024:2048] == 0xAA).all() and (dst_a[2560:] == 0xAA).all()

            # one row outside the grant refuses the whole read: the granted row is not sent either
            dst_a[:] = 0xAA
            caplog.clear()
            with pytest.raises(GrantRefusedError, match=r"row 1: region 0 bytes \[1024, 1100\)"):
                await a.read(peer_a, batch(0, [0, 1024], 0, [0, 1024], [1024, 76]))
            assert (dst_a == 0xAA).all()
            assert "d-a" in caplog.text and "[1024, 1100)" in caplog.text

            # a's grant does not let b read
            with pytest.raises(GrantRefusedError):
                await b.read(peer_b, batch(0, 0, 0, 0, 1024))
            assert (dst_b == 0xBB).all()

            # the connection stays usable after a refusal; lease end refuses
            await a.read(peer_a, batch(0, 0, 0, 0, 16))
            assert bytes(dst_a[:16]) == bytes(src[:16])
            clock.now += 30
            dst_a[:] = 0xAA
            with pytest.raises(GrantRefusedError):
                await a.read(peer_a, batch(0, 0, 0, 0, 16))
            assert (dst_a == 0xAA).all()

            # revoke ends a grant at once
            p.grants.grant("r2", "d-b", _ranges((0, 0, 4096)))
            await b.read(peer_b, batch(0, 0, 0, 0, 4096))
            assert bytes(dst_b) == bytes(src)
            assert p.grants.revoke("r2") == 1
            dst_b[:] = 0xBB
            with pytest.raises(GrantRefusedError):
                await b.read(peer_b, batch(0, 0, 0, 0, 1))
            assert (dst_b == 0xBB).all()
    assert SECRET not in caplog.text


@pytest.mark.anyio
async def test_without_require_grants_every_authenticated_peer_reads() -> None:
    """The default stays what it was; a refusal there is a bounds refusal, not a grant one."""
    src = np.arange(256, dtype=np.uint8)
    dst = np.zeros(256, dtype=np.uint8)
    with anyio.fail_after(20):
        async with TcpTransport(name="p", secret=SECRET) as p, TcpTransport(name="d", secret=SECRET) as d:
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            peer = await d.connect(p.local_metadata())
            await d.read(peer, batch(0, 0, 0, 0, 256))
            assert bytes(dst) == bytes(src)
            with pytest.raises(TransferError) as info:
                await d.read(peer, batch(0, 200, 0, 0, 100))
            assert not isinstance(info.value, GrantRefusedError)


def test_require_grants_is_a_registry_option() -> None:
    from hybridxfer.transport.registry import open_transport

    t = open_transport("tcp", name="p", require_grants=True)
    assert isinstance(t, TcpTransport) and t.require_grants and t.grants.grants() == ()


@pytest.mark.anyio
async def test_under_tls_grants_bind_to_the_certificate_not_the_declared_name(pki: Pki) -> None:
    src = np.random.default_rng(11).integers(0, 256, 1024, dtype=np.uint8)
    dst = np.zeros(1024, dtype=np.uint8)
    with anyio.fail_after(30):
        async with (TcpTransport(name="p", tls=pki.p, require_grants=True) as p,
                    TcpTransport(name="claims-another-name", tls=pki.d) as d):
            await p.register([region_of("src", src)])
            await d.register([region_of("dst", dst)])
            peer = await d.connect(p.local_metadata())
            p.grants.grant("r-name", "claims-another-name", _ranges((0, 0, 1024)))
            with pytest.raises(GrantRefusedError, match="'d0'"):
                await d.read(peer, batch(0, 0, 0, 0, 1024))
            assert (dst == 0).all()
            p.grants.grant("r-cert", "d0", _ranges((0, 0, 1024)))  # d's certificate subject
            await d.read(peer, batch(0, 0, 0, 0, 1024))
            assert bytes(dst) == bytes(src)


@pytest.mark.anyio
async def test_writes_need_a_write_grant_when_grants_are_required(caplog: pytest.LogCaptureFixture) -> None:
    """A prefill worker expects no writes: requiring grants refuses them all; a decode worker
    that requires grants lets its prefill peer write only the blocks it granted it to write."""
    from hybridxfer.transport import writable

    caplog.set_level(logging.INFO, logger="hybridxfer.transport.tcp")
    mine = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)
    theirs = np.full(4096, 0x33, dtype=np.uint8)
    with anyio.fail_after(30):
        async with (TcpTransport(name="target", secret=SECRET, require_grants=True) as target,
                    TcpTransport(name="writer", secret=SECRET) as writer):
            await target.register([region_of("mem", theirs)])
            await writer.register([region_of("src", mine)])
            peer = await writer.connect(target.local_metadata())
            with pytest.raises(GrantRefusedError, match="no live write grant"):
                await writable(writer).write(peer, batch(0, 0, 0, 0, 1024))
            assert (theirs == 0x33).all() and "refused WRITE" in caplog.text and "'writer'" in caplog.text
            target.grants.grant("r1", "writer", _ranges((0, 0, 1024)))  # a read grant: not a write grant
            with pytest.raises(GrantRefusedError):
                await writable(writer).write(peer, batch(0, 0, 0, 0, 1024))
            assert (theirs == 0x33).all()
            target.grants.grant("r1", "writer", _ranges((0, 1024, 1024)), access="write")
            await writable(writer).write(peer, batch(0, 1024, 0, 1024, 1024))
            assert bytes(theirs[1024:2048]) == bytes(mine[1024:2048])
            assert (theirs[:1024] == 0x33).all() and (theirs[2048:] == 0x33).all()
            with pytest.raises(GrantRefusedError, match="write grant"):
                await writable(writer).write(peer, batch(0, 2048, 0, 2040, 16))
            assert (theirs[2048:] == 0x33).all()
            # the connection stays usable after refusals
            await writable(writer).write(peer, batch(0, 1024, 0, 1024, 8))

"""The public transport conformance suite: subclass it in your plugin's tests.

Recipe (a plugin's ``tests/test_conformance.py``)::

    from hybridxfer.testing.conformance import TransportConformanceTests

    class TestMyTransportConformance(TransportConformanceTests):
        transport_name = "mytransport"            # its entry-point name
        transport_options = {"some_option": 1}    # passed to the factory, also in peer processes

Every test runs on asyncio and trio (the ``anyio`` pytest plugin). Override
``transport_factory(self, name)`` to customise in-process construction. A transport that
cannot cross processes (only ``loopback``) subclasses :class:`InProcessConformanceTests`.
Each test calls one ``check_*`` function, which you can also run without pytest through
:func:`hybridxfer.testing.checker.check_transport`. The ``test_write_*`` tests hold a
transport whose ``capabilities.writes`` is true to the write (push) contract; for one
without writes they only check that ``writable()`` refuses it, typed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar

import anyio
import pytest

from hybridxfer.testing import _checks as checks
from hybridxfer.testing import _cross_process as cross
from hybridxfer.testing import _write_checks as write_checks
from hybridxfer.testing._hybrid_check import check_full_hybrid_oracle
from hybridxfer.transport import Transport
from hybridxfer.transport.registry import open_transport

__all__ = ["InProcessConformanceTests", "TransportConformanceTests"]


class InProcessConformanceTests:
    """Checks that need only transports in this process."""

    transport_name: ClassVar[str] = ""
    transport_options: ClassVar[Mapping[str, object]] = {}
    #: Upper bound for one check (the suite must never hang CI).
    check_timeout: ClassVar[float] = 120.0

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def transport_factory(self, name: str) -> Transport:
        """A fresh, not yet entered transport for agent ``name``."""
        if not self.transport_name:
            raise TypeError(f"{type(self).__name__} must set transport_name or override transport_factory")
        return open_transport(self.transport_name, name=name, **dict(self.transport_options))

    async def _run(self, check: Callable[[checks.TransportFactory], Awaitable[None]]) -> None:
        with anyio.fail_after(self.check_timeout):
            await check(self.transport_factory)

    @pytest.mark.anyio
    async def test_single_small_read(self) -> None:
        await self._run(checks.check_single_small_read)

    @pytest.mark.anyio
    async def test_large_read(self) -> None:
        await self._run(checks.check_large_read)

    @pytest.mark.anyio
    async def test_many_tiny_descriptors(self) -> None:
        await self._run(checks.check_many_tiny_descriptors)

    @pytest.mark.anyio
    async def test_several_sources(self) -> None:
        await self._run(checks.check_several_sources)

    @pytest.mark.anyio
    async def test_zero_length(self) -> None:
        await self._run(checks.check_zero_length)

    @pytest.mark.anyio
    async def test_out_of_bounds_refused(self) -> None:
        await self._run(checks.check_out_of_bounds_refused)

    @pytest.mark.anyio
    async def test_notification_exactly_once(self) -> None:
        await self._run(checks.check_notification_exactly_once)

    @pytest.mark.anyio
    async def test_concurrent_reads(self) -> None:
        await self._run(checks.check_concurrent_reads)

    @pytest.mark.anyio
    async def test_cancellation(self) -> None:
        await self._run(checks.check_cancellation)

    @pytest.mark.anyio
    async def test_aclose_twice(self) -> None:
        await self._run(checks.check_aclose_twice)

    @pytest.mark.anyio
    async def test_bad_metadata(self) -> None:
        await self._run(checks.check_bad_metadata)

    # Writes (push): each check holds a transport with ``capabilities.writes`` to the write
    # contract; one without writes must refuse ``writable()`` with UnsupportedOperationError.

    @pytest.mark.anyio
    async def test_write_exact(self) -> None:
        await self._run(write_checks.check_write_exact)

    @pytest.mark.anyio
    async def test_write_many_rows(self) -> None:
        await self._run(write_checks.check_write_many_rows)

    @pytest.mark.anyio
    async def test_write_large(self) -> None:
        await self._run(write_checks.check_write_large)

    @pytest.mark.anyio
    async def test_write_zero_length(self) -> None:
        await self._run(write_checks.check_write_zero_length)

    @pytest.mark.anyio
    async def test_write_out_of_bounds_refused(self) -> None:
        await self._run(write_checks.check_write_out_of_bounds_refused)

    @pytest.mark.anyio
    async def test_concurrent_writes(self) -> None:
        await self._run(write_checks.check_concurrent_writes)

    @pytest.mark.anyio
    async def test_write_cancellation(self) -> None:
        await self._run(write_checks.check_write_cancellation)

    @pytest.mark.anyio
    async def test_write_after_aclose(self) -> None:
        await self._run(write_checks.check_write_after_aclose)

    @pytest.mark.anyio
    async def test_write_to_closed_peer(self) -> None:
        await self._run(write_checks.check_write_to_closed_peer)


class TransportConformanceTests(InProcessConformanceTests):
    """The full suite, including a real peer process killed and restarted.

    Cross-process tests build the peer's transport from ``transport_name`` and
    ``transport_options`` (they must be JSON-serialisable).
    """

    async def _run_cross(self, check: Callable[[str, Mapping[str, object]], Awaitable[None]]) -> None:
        with anyio.fail_after(self.check_timeout):
            await check(self.transport_name, dict(self.transport_options))

    @pytest.mark.anyio
    async def test_peer_killed_before_transfer(self) -> None:
        await self._run_cross(cross.check_peer_killed_before)

    @pytest.mark.anyio
    async def test_peer_killed_mid_transfer(self) -> None:
        await self._run_cross(cross.check_peer_killed_mid)

    @pytest.mark.anyio
    async def test_peer_killed_near_end(self) -> None:
        await self._run_cross(cross.check_peer_killed_near_end)

    @pytest.mark.anyio
    async def test_reconnect_after_restart(self) -> None:
        await self._run_cross(cross.check_reconnect_after_restart)

    @pytest.mark.anyio
    async def test_notified_once_across_processes(self) -> None:
        await self._run_cross(cross.check_notified_once_across_processes)

    @pytest.mark.anyio
    async def test_incompatible_peer_refused(self) -> None:
        await self._run_cross(cross.check_incompatible_peer_refused)

    @pytest.mark.anyio
    async def test_full_hybrid_oracle_between_processes(self) -> None:
        await self._run_cross(check_full_hybrid_oracle)

    @pytest.mark.anyio
    async def test_write_across_processes(self) -> None:
        await self._run_cross(cross.check_write_across_processes)

    @pytest.mark.anyio
    async def test_write_to_killed_peer(self) -> None:
        await self._run_cross(cross.check_write_to_killed_peer)

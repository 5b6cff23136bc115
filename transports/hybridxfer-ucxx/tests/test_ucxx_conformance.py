"""The public hybridxfer conformance suite, run for real against the UCXX transport.

UCXX is asyncio-only (ucxx drives UCX progress from the asyncio loop), so the suite's
backend parameter is narrowed to asyncio; on trio the transport raises a clear
``TransportError`` instead (see ``test_ucxx_transport.py``).
"""

from __future__ import annotations

import pytest

from hybridxfer.testing.conformance import TransportConformanceTests


class TestUcxxConformance(TransportConformanceTests):
    transport_name = "ucxx"
    transport_options = {"read_timeout": 30.0}

    @pytest.fixture(params=["asyncio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

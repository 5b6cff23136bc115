"""The whole public conformance suite again, with every connection TLS 1.3 (mutual certificates).

Why the whole suite: TLS changes the byte path under every operation — reads of every
shape, notifications, cancellation mid-reply, peers killed and restarted in other
processes — so each of them must hold with it exactly as without. On asyncio only, to
keep the suite fast: ``test_tls.py`` runs the TLS paths on trio too.
"""

from __future__ import annotations

import pytest

from hybridxfer.testing.conformance import TransportConformanceTests
from tests._pki import Pki, pki

__all__ = ["pki"]


class TestTcpTlsConformance(TransportConformanceTests):
    transport_name = "tcp"

    @pytest.fixture(params=["asyncio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture(autouse=True)
    def _tls_options(self, pki: Pki) -> None:
        # JSON-serialisable, as the suite's peer processes need
        type(self).transport_options = {
            "secret": "conformance-secret",
            "tls": {"cert": str(pki.p.cert), "key": str(pki.p.key), "ca": str(pki.p.ca)},
        }

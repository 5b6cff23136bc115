from __future__ import annotations

from hybridxfer.testing.conformance import InProcessConformanceTests, TransportConformanceTests


class TestLoopbackConformance(InProcessConformanceTests):
    transport_name = "loopback"


class TestTcpConformance(TransportConformanceTests):
    transport_name = "tcp"
    transport_options = {"secret": "conformance-secret"}

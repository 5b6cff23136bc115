"""The public hybridxfer conformance suite, run for real against the Mooncake transport."""

from __future__ import annotations

from hybridxfer.testing.conformance import TransportConformanceTests


class TestMooncakeConformance(TransportConformanceTests):
    transport_name = "mooncake"
    transport_options = {"host": "127.0.0.1"}

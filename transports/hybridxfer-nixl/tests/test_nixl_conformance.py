"""The public hybridxfer conformance suite, run for real against the NIXL transport."""

from __future__ import annotations

from hybridxfer.testing.conformance import TransportConformanceTests


class TestNixlConformance(TransportConformanceTests):
    transport_name = "nixl"
    transport_options = {"read_timeout": 30.0}

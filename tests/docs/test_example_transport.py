"""The example transport of docs/writing-a-transport.md passes the in-process suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hybridxfer.testing.conformance import InProcessConformanceTests
from hybridxfer.transport import Transport

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "memory_transport.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_memory_transport", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


memory_transport = _load()


class TestMemoryTransportConformance(InProcessConformanceTests):
    transport_name = "memory"

    def transport_factory(self, name: str) -> Transport:
        transport: Transport = memory_transport.MemoryTransport(name=name)
        return transport


def test_it_satisfies_the_protocol() -> None:
    assert isinstance(memory_transport.MemoryTransport(name="x"), Transport)

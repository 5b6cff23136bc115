from __future__ import annotations

import pytest

from hybridxfer.errors import TransportNotFoundError
from hybridxfer.transport.loopback import LoopbackTransport
from hybridxfer.transport.registry import available_transports, get_transport_factory, open_transport
from hybridxfer.transport.tcp import TcpTransport


def test_builtins_are_registered() -> None:
    assert {"loopback", "tcp"} <= set(available_transports())
    assert get_transport_factory("tcp") is TcpTransport
    assert get_transport_factory("loopback") is LoopbackTransport


def test_unknown_name_lists_known_and_install_hint() -> None:
    with pytest.raises(TransportNotFoundError) as info:
        get_transport_factory("nixl-does-not-exist")
    assert "loopback" in str(info.value) and "tcp" in str(info.value)
    assert "pip install hybridxfer-nixl-does-not-exist" in str(info.value)


def test_url_sets_host_and_port() -> None:
    transport = open_transport("tcp://127.0.0.1:5999", name="x")
    assert isinstance(transport, TcpTransport)
    assert transport.address == ("127.0.0.1", 5999)
    assert isinstance(open_transport("loopback", name="y"), LoopbackTransport)

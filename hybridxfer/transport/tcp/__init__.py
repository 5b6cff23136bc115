"""The TCP fallback transport (anyio; asyncio and trio). See :mod:`._transport`."""

from __future__ import annotations

from hybridxfer.transport.tcp._client import TcpPeer
from hybridxfer.transport.tcp._server import ServerLimits
from hybridxfer.transport.tcp._transport import SECRET_ENV, TcpTransport, is_loopback

__all__ = ["SECRET_ENV", "ServerLimits", "TcpPeer", "TcpTransport", "is_loopback"]

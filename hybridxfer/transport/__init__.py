"""Transports: the wire contract, the registry, and the built-in loopback and TCP wires."""

from __future__ import annotations

from hybridxfer.transport._protocol import (
    MemoryKind,
    MemoryRegion,
    Notification,
    PeerHandle,
    ReadBatch,
    Transport,
    TransportCapabilities,
)

__all__ = [
    "MemoryKind",
    "MemoryRegion",
    "Notification",
    "PeerHandle",
    "ReadBatch",
    "Transport",
    "TransportCapabilities",
]

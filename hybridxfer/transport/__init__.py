"""Transports: the wire contract, the registry, and the built-in loopback and TCP wires.

A transport receives :class:`~hybridxfer.descriptors.Descriptors` (re-exported here with
the bounds checks every transport applies) and moves them as they are.
"""

from __future__ import annotations

from hybridxfer.descriptors import Descriptors, bounds_problem, check_bounds
from hybridxfer.transport._protocol import (
    MemoryKind,
    MemoryRegion,
    Notification,
    PeerHandle,
    ReadBatch,
    Transport,
    TransportCapabilities,
)
from hybridxfer.transport._threads import LoopWaker, wait_future
from hybridxfer.transport._wrapper import DelegatingTransport

__all__ = [
    "DelegatingTransport",
    "Descriptors",
    "LoopWaker",
    "MemoryKind",
    "MemoryRegion",
    "Notification",
    "PeerHandle",
    "ReadBatch",
    "Transport",
    "TransportCapabilities",
    "bounds_problem",
    "check_bounds",
    "wait_future",
]

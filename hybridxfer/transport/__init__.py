"""Transports: the wire contract, the registry, and the built-in loopback and TCP wires.

A transport receives :class:`~hybridxfer.descriptors.Descriptors` (re-exported here with
the bounds checks every transport applies) and moves them as they are.
"""

from __future__ import annotations

from hybridxfer.descriptors import Descriptors, bounds_problem, check_bounds
from hybridxfer.transport._grants import REFUSAL_PREFIX, Access, ByteRanges, Grant, GrantTable, ReadAuthorizer, grant_table
from hybridxfer.transport._protocol import (
    MemoryKind,
    MemoryRegion,
    Notification,
    PeerHandle,
    ReadBatch,
    Transport,
    TransportCapabilities,
    WritableTransport,
    writable,
)
from hybridxfer.transport._threads import LoopWaker, wait_future
from hybridxfer.transport._tls import TlsConfig, TlsConfigError, TlsContexts, TlsIdentity, tls_refusal
from hybridxfer.transport._wrapper import DelegatingTransport

__all__ = [
    "Access",
    "ByteRanges",
    "DelegatingTransport",
    "Descriptors",
    "Grant",
    "GrantTable",
    "LoopWaker",
    "MemoryKind",
    "MemoryRegion",
    "Notification",
    "PeerHandle",
    "REFUSAL_PREFIX",
    "ReadAuthorizer",
    "ReadBatch",
    "TlsConfig",
    "TlsConfigError",
    "TlsContexts",
    "TlsIdentity",
    "Transport",
    "TransportCapabilities",
    "WritableTransport",
    "bounds_problem",
    "check_bounds",
    "grant_table",
    "tls_refusal",
    "wait_future",
    "writable",
]

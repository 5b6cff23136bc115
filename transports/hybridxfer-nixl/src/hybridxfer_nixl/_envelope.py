"""The metadata envelope a NIXL peer publishes: our region table around NIXL's own blob.

Why an envelope: NIXL's agent metadata says where memory is, but not which of *our*
region names each registration is, nor in which order ``Descriptors.src_region`` indexes
them. The envelope is versioned so a peer running an incompatible plugin is refused in
:meth:`NixlTransport.connect` before NIXL ever parses its blob. No pickle: a fixed binary
header, a small JSON region table, then NIXL's bytes verbatim.

Layout (little-endian)::

    b"HXNX" | u16 version | u32 json length | json | nixl agent metadata
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import attrs

from hybridxfer.transport import MemoryKind

__all__ = ["ENVELOPE_VERSION", "NixlEnvelope", "RegionEntry", "decode", "encode"]

_MAGIC = b"HXNX"
ENVELOPE_VERSION = 1
_HEADER = struct.Struct("<4sHI")


@attrs.frozen
class RegionEntry:
    """One registered region as a peer sees it: enough to build remote descriptors."""

    name: str
    address: int
    length: int
    kind: MemoryKind
    device: int


@attrs.frozen
class NixlEnvelope:
    """Decoded metadata of one NIXL peer."""

    agent_name: str
    regions: tuple[RegionEntry, ...]
    nixl_metadata: bytes


def encode(agent_name: str, regions: Sequence[RegionEntry], nixl_metadata: bytes) -> bytes:
    table = {
        "agent": agent_name,
        "regions": [[r.name, r.address, r.length, r.kind, r.device] for r in regions],
    }
    body = json.dumps(table, separators=(",", ":")).encode()
    return _HEADER.pack(_MAGIC, ENVELOPE_VERSION, len(body)) + body + nixl_metadata


def decode(data: bytes) -> NixlEnvelope:
    """Parse an envelope; raises ``ValueError`` naming what is wrong."""
    if len(data) < _HEADER.size:
        raise ValueError(f"NIXL metadata too short ({len(data)} bytes)")
    magic, version, body_len = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not hybridxfer-nixl metadata (magic {magic!r})")
    if version != ENVELOPE_VERSION:
        raise ValueError(f"NIXL metadata version {version}, this plugin speaks {ENVELOPE_VERSION}")
    end = _HEADER.size + body_len
    if end > len(data):
        raise ValueError("NIXL metadata truncated inside the region table")
    table = json.loads(data[_HEADER.size : end])
    regions = []
    for name, address, length, kind, device in table["regions"]:
        if kind not in ("host", "cuda"):
            raise ValueError(f"region {name!r}: unknown memory kind {kind!r}")
        regions.append(RegionEntry(str(name), int(address), int(length), kind, int(device)))
    return NixlEnvelope(str(table["agent"]), tuple(regions), bytes(data[end:]))

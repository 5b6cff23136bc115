"""The metadata a UCXX peer publishes: control address, UCX worker address, region table.

Versioned and pickle-free: ``b"HXUC" | u16 version | u32 json length | json | worker
address``. The worker address travels raw because it is opaque UCX bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import attrs

__all__ = ["ENVELOPE_VERSION", "UcxxEnvelope", "decode", "encode"]

_MAGIC = b"HXUC"
ENVELOPE_VERSION = 1
_HEADER = struct.Struct("<4sHI")


@attrs.frozen
class UcxxEnvelope:
    """Decoded metadata of one UCXX peer."""

    agent_name: str
    host: str
    port: int
    region_names: tuple[str, ...]
    region_lengths: tuple[int, ...]
    worker_address: bytes


def encode(env: UcxxEnvelope) -> bytes:
    table = {
        "agent": env.agent_name,
        "host": env.host,
        "port": env.port,
        "regions": [[n, ln] for n, ln in zip(env.region_names, env.region_lengths, strict=True)],
    }
    body = json.dumps(table, separators=(",", ":")).encode()
    return _HEADER.pack(_MAGIC, ENVELOPE_VERSION, len(body)) + body + env.worker_address


def decode(data: bytes) -> UcxxEnvelope:
    """Parse an envelope; raises ``ValueError`` naming what is wrong."""
    if len(data) < _HEADER.size:
        raise ValueError(f"UCXX metadata too short ({len(data)} bytes)")
    magic, version, body_len = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not hybridxfer-ucxx metadata (magic {magic!r})")
    if version != ENVELOPE_VERSION:
        raise ValueError(f"UCXX metadata version {version}, this plugin speaks {ENVELOPE_VERSION}")
    end = _HEADER.size + body_len
    if end > len(data):
        raise ValueError("UCXX metadata truncated inside the region table")
    table = json.loads(data[_HEADER.size : end])
    regions: Sequence[list[object]] = table["regions"]
    return UcxxEnvelope(
        agent_name=str(table["agent"]),
        host=str(table["host"]),
        port=int(table["port"]),
        region_names=tuple(str(r[0]) for r in regions),
        region_lengths=tuple(int(str(r[1])) for r in regions),
        worker_address=bytes(data[end:]),
    )

"""The metadata a Mooncake peer publishes: where its engine listens and what it serves.

Why an envelope: with ``P2PHANDSHAKE`` Mooncake needs only ``host:rpc_port`` to reach a
peer, but a reader also needs the peer's region table (names in ``src_region`` order,
with the addresses one-sided reads name) and a way to know it reached the process that
published the metadata and not a stranger reusing the port. That is the ``token``: 16
random bytes the peer serves from its ``identity`` block, which :meth:`connect` reads
and compares. Versioned, no pickle: a fixed header, then a small JSON document.

Layout (little-endian)::

    b"HXMC" | u16 version | u32 json length | json
"""

from __future__ import annotations

import json
import struct
import attrs

__all__ = ["ENVELOPE_VERSION", "Envelope", "RegionEntry", "TOKEN_BYTES", "decode", "encode"]

_MAGIC = b"HXMC"
ENVELOPE_VERSION = 1
_HEADER = struct.Struct("<4sHI")
TOKEN_BYTES = 16


@attrs.frozen
class RegionEntry:
    """One registered region as a reader sees it."""

    name: str
    address: int
    length: int


@attrs.frozen
class Envelope:
    """Decoded metadata of one Mooncake peer."""

    agent_name: str
    host: str
    rpc_port: int
    token: bytes
    identity_address: int
    regions: tuple[RegionEntry, ...]

    @property
    def target(self) -> str:
        """The segment name Mooncake's P2P handshake connects to."""
        return f"{self.host}:{self.rpc_port}"


def encode(envelope: Envelope) -> bytes:
    doc = {
        "agent": envelope.agent_name,
        "host": envelope.host,
        "port": envelope.rpc_port,
        "token": envelope.token.hex(),
        "identity": envelope.identity_address,
        "regions": [[r.name, r.address, r.length] for r in envelope.regions],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return _HEADER.pack(_MAGIC, ENVELOPE_VERSION, len(body)) + body


def decode(data: bytes) -> Envelope:
    """Parse an envelope; raises ``ValueError`` naming what is wrong."""
    if len(data) < _HEADER.size:
        raise ValueError(f"Mooncake metadata too short ({len(data)} bytes)")
    magic, version, body_len = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not hybridxfer-mooncake metadata (magic {magic!r})")
    if version != ENVELOPE_VERSION:
        raise ValueError(f"Mooncake metadata version {version}, this plugin speaks {ENVELOPE_VERSION}")
    if _HEADER.size + body_len != len(data):
        raise ValueError("Mooncake metadata length does not match its header")
    try:
        doc = json.loads(data[_HEADER.size:])
        regions = tuple(RegionEntry(str(n), int(a), int(ln)) for n, a, ln in doc["regions"])
        envelope = Envelope(str(doc["agent"]), str(doc["host"]), int(doc["port"]), bytes.fromhex(doc["token"]),
                            int(doc["identity"]), regions)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed Mooncake metadata: {exc!r}") from exc
    if len(envelope.token) != TOKEN_BYTES or not 0 < envelope.rpc_port < 65536:
        raise ValueError("malformed Mooncake metadata: bad token or port")
    if any(r.length < 0 or (r.address <= 0 and r.length > 0) for r in regions):
        raise ValueError("malformed Mooncake metadata: a region with a bad address or length")
    return envelope


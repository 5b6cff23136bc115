"""What an agent publishes about itself: enough for a peer to find it and to notice a restart."""

from __future__ import annotations

import json
import secrets

import attrs

from hybridxfer.errors import ProtocolError

__all__ = ["PeerRecord", "new_incarnation"]

VERSION = 1


def new_incarnation() -> str:
    """A random id made once per process start: a peer back on the same address is another peer."""
    return secrets.token_hex(8)


@attrs.frozen
class PeerRecord:
    """One published agent. ``name`` is unique within a namespace (``prefill-0``); ``address`` is
    where its metadata channel listens (``host:port``); ``incarnation`` changes on every restart."""

    name: str
    address: str
    incarnation: str
    model_id: str
    role: str = "prefill"
    tp_size: int = 1
    tp_rank: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps({"version": VERSION, **attrs.asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str = "?") -> PeerRecord:
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise ProtocolError(f"peer record {key!r}: version {doc.get('version')!r}, expected {VERSION}")
            fields = {f.name: doc[f.name] for f in attrs.fields(cls)}
            record = cls(**fields)
        except ProtocolError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"peer record {key!r} is malformed: {exc}") from exc
        if not all(isinstance(getattr(record, f), str) for f in ("name", "address", "incarnation", "model_id", "role")) \
                or not all(type(getattr(record, f)) is int for f in ("tp_size", "tp_rank")):
            raise ProtocolError(f"peer record {key!r} has a field of the wrong type")
        return record

"""What agents tell each other before any byte moves: the versioned hello and control messages.

Why the agent info travels inside the published metadata: D can check a P's model and
layout digests *before* it opens a single connection, so an incompatible peer is refused
with no byte moved. D then sends its own info to P as the first control message, so P
knows (and logs) who reads from it. Everything is JSON with a version and a magic prefix
(bytes are base64): readable in a debugger, never pickle.
"""

from __future__ import annotations

import base64
import json
from typing import Literal, Protocol, runtime_checkable

import attrs

from hybridxfer.errors import ConnectError, IncompatibleLayoutsError

__all__ = [
    "AgentInfo",
    "ControlMessage",
    "LayoutLike",
    "check_compatible",
    "decode_control",
    "encode_control",
]

_INFO_MAGIC = b"HXAGENT1"
_CONTROL_MAGIC = b"HXCTL1"
INFO_VERSION = 1

Role = Literal["prefill", "decode", "both"]


@runtime_checkable
class LayoutLike(Protocol):
    """What the agent needs from a layout (the lead's ``RankLayout`` provides these)."""

    @property
    def digest(self) -> str: ...

    @property
    def model_digest(self) -> str: ...

    def to_json(self) -> str: ...


@attrs.frozen
class AgentInfo:
    """One agent's identity, as published to peers (the hello)."""

    name: str
    role: Role
    rank: int
    tp_size: int
    layout_digest: str
    model_digest: str
    transport: str
    transport_metadata: bytes = attrs.field(repr=False)
    #: Opaque engine-defined instance parameters (e.g. JSON); compared by nobody here.
    instance_parameters: bytes = b""
    version: int = INFO_VERSION

    def to_bytes(self) -> bytes:
        doc = attrs.asdict(self)
        doc["transport_metadata"] = base64.b64encode(self.transport_metadata).decode()
        doc["instance_parameters"] = base64.b64encode(self.instance_parameters).decode()
        return _INFO_MAGIC + json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentInfo:
        """Parse published metadata. Raises :class:`ConnectError` if it is not ours."""
        if not data.startswith(_INFO_MAGIC):
            raise ConnectError("not hybridxfer agent metadata (bad magic)")
        try:
            doc = json.loads(data[len(_INFO_MAGIC) :])
            if doc.get("version") != INFO_VERSION:
                raise ConnectError(f"agent metadata version {doc.get('version')} is not {INFO_VERSION}")
            return cls(
                name=str(doc["name"]),
                role=doc["role"],
                rank=int(doc["rank"]),
                tp_size=int(doc["tp_size"]),
                layout_digest=str(doc["layout_digest"]),
                model_digest=str(doc["model_digest"]),
                transport=str(doc["transport"]),
                transport_metadata=base64.b64decode(doc["transport_metadata"]),
                instance_parameters=base64.b64decode(doc["instance_parameters"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConnectError(f"malformed agent metadata: {exc}") from exc


def check_compatible(local: AgentInfo, remote: AgentInfo) -> None:
    """Refuse a peer we must never exchange bytes with (raised before connecting)."""
    if local.transport != remote.transport:
        raise ConnectError(
            f"peer {remote.name!r} speaks transport {remote.transport!r}, we speak {local.transport!r}"
        )
    if local.model_digest and remote.model_digest and local.model_digest != remote.model_digest:
        raise IncompatibleLayoutsError(
            f"peer {remote.name!r} serves model {remote.model_digest!r}, we hold {local.model_digest!r}"
        )


@attrs.frozen
class ControlMessage:
    """A notification between agents: ``hello`` (D introduces itself) or ``done``."""

    kind: Literal["hello", "done"]
    request_id: str = ""
    dst_rank: int = -1
    info: AgentInfo | None = None


def encode_control(message: ControlMessage) -> bytes:
    doc: dict[str, object] = {"kind": message.kind, "request_id": message.request_id, "dst_rank": message.dst_rank}
    if message.info is not None:
        doc["info"] = base64.b64encode(message.info.to_bytes()).decode()
    return _CONTROL_MAGIC + json.dumps(doc, sort_keys=True).encode()


def decode_control(data: bytes) -> ControlMessage | None:
    """The control message in a notification, or ``None`` if it is not one of ours."""
    if not data.startswith(_CONTROL_MAGIC):
        return None
    try:
        doc = json.loads(data[len(_CONTROL_MAGIC) :])
        kind = doc["kind"]
        if kind not in ("hello", "done"):
            return None
        info = AgentInfo.from_bytes(base64.b64decode(doc["info"])) if "info" in doc else None
        return ControlMessage(kind, str(doc["request_id"]), int(doc["dst_rank"]), info)
    except (ValueError, TypeError, KeyError, ConnectError):
        return None

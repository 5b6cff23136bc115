"""What agents tell each other before any byte moves: the versioned hello and control messages.

Why the agent info travels inside the published metadata: D can check a P's model and
layout digests *before* it opens a single connection, so an incompatible peer is refused
with no byte moved. D then sends its own info to P as the first control message, so P
knows (and logs) who reads from it. Everything is one JSON document with a version and
a magic prefix: the rank's layout is a named field holding the layout document itself
(as :meth:`~hybridxfer.layout.RankLayout.instance_dict` writes it, versioned by its own
``format`` key), the hello carries the info as a nested object, and only opaque bytes
(the transport's metadata, engine parameters) are base64. Readable in a debugger, never
pickle.

Why an incarnation: an address names a place, not a process. A P that restarts on the
same host and port holds other memory behind the same region names, so every agent makes
a random ``incarnation`` when it starts and publishes it here; D compares it with what it
handshook with before it trusts a reconnected peer (see :class:`~hybridxfer.errors.PeerRestartedError`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Literal, Protocol, cast, runtime_checkable

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
#: Version 2: the layout is the named field ``layout``; the hello nests the info as an object.
#: Version 3: ``incarnation``, the random id of the agent's process lifetime.
INFO_VERSION = 3

Role = Literal["prefill", "decode", "both"]


@runtime_checkable
class LayoutLike(Protocol):
    """What the agent compares in a handshake (:class:`~hybridxfer.layout.RankLayout` provides
    these; only a ``RankLayout`` is also published for peers to plan against)."""

    @property
    def digest(self) -> str: ...

    @property
    def model_digest(self) -> str: ...


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
    #: The rank's resolved layout as plain data (``RankLayout.instance_dict()``), what a
    #: peer plans against; ``None`` when the agent has none. ``layout_digest`` identifies
    #: it, so it takes no part in equality.
    layout: Mapping[str, object] | None = attrs.field(default=None, eq=False, repr=False)
    #: Random id made when the agent started; a peer restarted on the same address has another.
    incarnation: str = ""
    version: int = INFO_VERSION

    def to_dict(self) -> dict[str, object]:
        """The JSON document (bytes fields base64, the layout nested as it is)."""
        return {
            "version": self.version, "name": self.name, "role": self.role, "rank": self.rank,
            "tp_size": self.tp_size, "layout_digest": self.layout_digest, "model_digest": self.model_digest,
            "transport": self.transport,
            "transport_metadata": base64.b64encode(self.transport_metadata).decode(),
            "instance_parameters": base64.b64encode(self.instance_parameters).decode(),
            "layout": None if self.layout is None else dict(self.layout),
            "incarnation": self.incarnation,
        }

    def to_bytes(self) -> bytes:
        return _INFO_MAGIC + json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, doc: object) -> AgentInfo:
        """Read :meth:`to_dict` back. Raises :class:`ConnectError` naming what is wrong."""
        try:
            if not isinstance(doc, Mapping):
                raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
            if doc.get("version") != INFO_VERSION:
                raise ConnectError(f"agent metadata version {doc.get('version')} is not {INFO_VERSION}")
            layout = doc["layout"]
            if layout is not None and not isinstance(layout, Mapping):
                raise TypeError(f"field 'layout' must be an object or null, got {type(layout).__name__}")
            role = doc["role"]
            if role not in ("prefill", "decode", "both"):
                raise ValueError(f"unknown role {role!r}")
            return cls(
                name=str(doc["name"]),
                role=cast(Role, role),
                rank=int(doc["rank"]),
                tp_size=int(doc["tp_size"]),
                layout_digest=str(doc["layout_digest"]),
                model_digest=str(doc["model_digest"]),
                transport=str(doc["transport"]),
                transport_metadata=base64.b64decode(doc["transport_metadata"], validate=True),
                instance_parameters=base64.b64decode(doc["instance_parameters"], validate=True),
                layout=layout,
                incarnation=str(doc["incarnation"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConnectError(f"malformed agent metadata: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentInfo:
        """Parse published metadata. Raises :class:`ConnectError` if it is not ours."""
        if not data.startswith(_INFO_MAGIC):
            raise ConnectError("not hybridxfer agent metadata (bad magic)")
        try:
            doc = json.loads(data[len(_INFO_MAGIC) :])
        except ValueError as exc:
            raise ConnectError(f"malformed agent metadata: {exc}") from exc
        return cls.from_dict(doc)


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
    #: ``done``: bytes the D rank read from the notified P rank for this request.
    bytes: int = 0
    #: ``done``: seconds the D rank's transfer of the whole request took.
    seconds: float = 0.0


def encode_control(message: ControlMessage) -> bytes:
    doc: dict[str, object] = {"kind": message.kind, "request_id": message.request_id,
                              "dst_rank": message.dst_rank, "bytes": message.bytes,
                              "seconds": message.seconds}
    if message.info is not None:
        doc["info"] = message.info.to_dict()
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
        info = AgentInfo.from_dict(doc["info"]) if "info" in doc else None
        return ControlMessage(kind, str(doc["request_id"]), int(doc["dst_rank"]), info,
                              int(doc.get("bytes", 0)), float(doc.get("seconds", 0.0)))
    except (ValueError, TypeError, KeyError, AttributeError, ConnectError):
        return None

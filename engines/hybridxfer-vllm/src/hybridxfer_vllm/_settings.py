"""``kv_connector_extra_config``: the connector's settings, checked once at start-up.

Why a frozen value: vLLM passes the extra config as a free-form dict; a typo there would
otherwise surface as a silent default in the middle of serving. Every key is known,
typed and reported together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem

__all__ = ["ConnectorSettings"]

_SOURCE = "kv_connector_extra_config"


@attrs.frozen
class ConnectorSettings:
    """What each ``kv_connector_extra_config`` key means (all optional)."""

    #: hybridxfer transport by name: ``tcp`` (default), ``nixl``, ``ucxx``, or ``loopback``
    #: (P and D in one process only).
    transport: str = "tcp"
    #: keyword options for the transport (tcp: ``host``, ``advertise_host``, ``secret`` …).
    transport_options: Mapping[str, Any] = attrs.field(factory=dict)
    #: address the prefill engine's metadata side channel listens on and advertises.
    side_channel_host: str = "127.0.0.1"
    #: its port; 0 picks a free one (it is sent to decoders in kv_transfer_params).
    side_channel_port: int = 0
    #: seconds P keeps a finished request's blocks for decoders that have not read them.
    lease_seconds: float = 30.0
    #: seconds a decoder waits for one request's bytes (and for the handshake) before
    #: reporting the request as failed.
    transfer_timeout: float = 30.0
    #: TP size of the decode engines that read from this prefill engine: each P rank
    #: frees a request's blocks only after every D rank reading it has finished.
    decode_tp: int | None = None

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None) -> ConnectorSettings:
        """Parse vLLM's dict; raise :class:`~hybridxfer.errors.LayoutError` listing bad keys."""
        extra = dict(extra or {})
        known = {f.name for f in attrs.fields(cls)}
        problems = [LayoutProblem(f"unknown key {k!r} (known: {', '.join(sorted(known))})", file=_SOURCE, path=k)
                    for k in extra if k not in known]
        types: dict[str, tuple[type, ...]] = {
            "transport": (str,), "transport_options": (dict,), "side_channel_host": (str,),
            "side_channel_port": (int,), "lease_seconds": (int, float), "transfer_timeout": (int, float),
            "decode_tp": (int, type(None)),
        }
        for key, allowed in types.items():
            if key in extra and (not isinstance(extra[key], allowed) or isinstance(extra[key], bool)):
                problems.append(LayoutProblem(f"must be {' or '.join(t.__name__ for t in allowed)}, "
                                              f"got {extra[key]!r}", file=_SOURCE, path=key))
        for key in ("lease_seconds", "transfer_timeout"):
            if isinstance(extra.get(key), (int, float)) and extra[key] <= 0:
                problems.append(LayoutProblem(f"must be positive, got {extra[key]!r}", file=_SOURCE, path=key))
        if isinstance(extra.get("decode_tp"), int) and extra["decode_tp"] < 1:
            problems.append(LayoutProblem(f"must be >= 1, got {extra['decode_tp']!r}", file=_SOURCE, path="decode_tp"))
        if problems:
            raise LayoutError(problems)
        values = {k: v for k, v in extra.items() if k in known}
        if "lease_seconds" in values:
            values["lease_seconds"] = float(values["lease_seconds"])
        if "transfer_timeout" in values:
            values["transfer_timeout"] = float(values["transfer_timeout"])
        return cls(**values)

"""hybridxfer-ucxx: a UCXX (two-sided tag send/recv) transport for hybridxfer.

Installed, it registers ``ucxx`` in the ``hybridxfer.transports`` entry-point group.
It requires anyio's asyncio backend.
"""

from __future__ import annotations

from hybridxfer_ucxx._client import UcxxPeer
from hybridxfer_ucxx._transport import UcxxTransport

__all__ = ["UcxxPeer", "UcxxTransport"]

"""hybridxfer-nixl: a NIXL (one-sided READ) transport for hybridxfer.

Installed, it registers ``nixl`` in the ``hybridxfer.transports`` entry-point group.
"""

from __future__ import annotations

from hybridxfer_nixl._peer import NixlPeer
from hybridxfer_nixl._transport import NixlTransport

__all__ = ["NixlPeer", "NixlTransport"]

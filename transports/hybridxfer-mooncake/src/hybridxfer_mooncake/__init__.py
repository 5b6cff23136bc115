"""hybridxfer-mooncake: a Mooncake Transfer Engine (TCP) transport for hybridxfer.

Installed, it registers ``mooncake`` in the ``hybridxfer.transports`` entry-point group.
Written against hybridxfer's public API only, like any third-party plugin.
"""

from __future__ import annotations

from hybridxfer_mooncake._peer import MooncakePeer
from hybridxfer_mooncake._transport import MAX_BATCH_ENTRIES, MooncakeTransport

__all__ = ["MAX_BATCH_ENTRIES", "MooncakePeer", "MooncakeTransport"]

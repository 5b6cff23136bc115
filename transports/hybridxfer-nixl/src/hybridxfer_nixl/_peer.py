"""What :meth:`NixlTransport.connect` returns: a peer's name and region table."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hybridxfer_nixl._descs import RegionTable

__all__ = ["NixlPeer"]


@attrs.frozen(eq=False)
class NixlPeer:
    """A connected NIXL peer. ``region_names`` is the order ``Descriptors.src_region`` indexes."""

    name: str
    table: RegionTable
    #: The exact metadata loaded into NIXL, so a reconnect with identical bytes is free.
    metadata: bytes = attrs.field(repr=False)

    @property
    def region_names(self) -> Sequence[str]:
        return self.table.names

"""Turn "request R may be read (or written) by peer X" into byte ranges in the transport's grant table.

Why in the agent and not the engine: an engine knows block tables, not byte offsets or
registration order. The agent has both — its :class:`~hybridxfer.layout.RankLayout`
gives the request's bytes (:func:`hybridxfer.plan.request_ranges`) by region name, and
its registration order gives the region index a READ names.

A push stream on D grants each writing P rank exactly the destination bytes of *its* rows
of the plan (:func:`grant_writes`), not the whole blocks: two P ranks that fill different
slices of one D block may each write only their own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError, RegistrationError
from hybridxfer.layout import RankLayout
from hybridxfer.plan import request_ranges
from hybridxfer.transport import Access, ByteRanges, Grant, Transport, grant_table

__all__ = ["RequestGrant", "grant_request", "grant_writes", "revoke_request"]

log = logging.getLogger("hybridxfer.execute")


@attrs.frozen
class RequestGrant:
    """What :meth:`Agent.grant <hybridxfer.execute.Agent.grant>` recorded.

    ``enforced``: the transport refuses reads outside grants (``require_grants``);
    ``False`` on a transport that records grants without checking them, or (``grant`` is
    then ``None``) that has no grant table at all — NIXL's one-sided reads, loopback.
    """

    request_id: str
    peer: str
    bytes: int
    enforced: bool
    grant: Grant | None = attrs.field(default=None, repr=False)


def grant_request(transport: Transport, layout: object, registered: Sequence[str], request_id: str, peer: str,
                  blocks: Mapping[str, Sequence[int]], lease: float | None, access: Access = "read") -> RequestGrant:
    """Grant ``peer`` the bytes of ``blocks`` (the request's block table on this rank) on this rank."""
    if not isinstance(layout, RankLayout):
        raise InvalidArgumentError("granting needs the agent's RankLayout (Agent(layout=...)) to find the bytes")
    ranges = request_ranges(layout, blocks)
    index = {name: i for i, name in enumerate(registered)}
    missing = sorted({layout.region_names[r] for r in set(ranges.region.tolist())} - set(index))
    if missing:
        raise RegistrationError(f"request {request_id!r} lies in regions {missing} that are not registered")
    region = np.array([index[ranges.region_names[r]] for r in ranges.region.tolist()], dtype=np.int64)
    table, required = grant_table(transport)
    if table is None:
        log.debug("granting %s to %s: transport %s has no grant table; not enforced", request_id, peer,
                  transport.name)
        return RequestGrant(request_id, peer, ranges.total_bytes, False)
    grant = table.grant(request_id, peer, ByteRanges(region, ranges.offset, ranges.length), lease=lease, access=access)
    log.info("granted %s to %s%s: %d bytes in %d ranges%s%s", request_id, peer,
             "" if access == "read" else " (write)", ranges.total_bytes, len(ranges),
             f", lease {lease:g} s" if lease is not None else "", "" if required else " (not enforced)")
    return RequestGrant(request_id, peer, ranges.total_bytes, required, grant)


def grant_writes(transport: Transport, request_id: str, peer: str, rows: Descriptors,
                 lease: float | None) -> RequestGrant:
    """Let ``peer`` write the destination side of ``rows`` (our regions in registration
    order, as a WRITE names them) for ``request_id`` — and nothing else."""
    ranges = ByteRanges(rows.dst_region, rows.dst_offset, rows.length).merged()
    table, required = grant_table(transport)
    if table is None:
        return RequestGrant(request_id, peer, ranges.total_bytes, False)
    grant = table.grant(request_id, peer, ranges, lease=lease, access="write")
    log.debug("granted %s to %s (write): %d bytes in %d ranges%s", request_id, peer, ranges.total_bytes,
              len(ranges), "" if required else " (not enforced)")
    return RequestGrant(request_id, peer, ranges.total_bytes, required, grant)


def revoke_request(transport: Transport, request_id: str, peer: str | None = None) -> int:
    """Withdraw ``request_id``'s grants (of one peer, or all); how many were live."""
    table, _ = grant_table(transport)
    return table.revoke(request_id, peer) if table is not None else 0

"""``PullResult``: what a successful pull (bulk or streamed) moved.

Why a module of its own: the bulk pull (``_decode``) and the streamed one (``_stream``)
both return it, and neither should import the other for it.
"""

from __future__ import annotations

import attrs

from hybridxfer.plan import TransferPlan

__all__ = ["PullResult"]


@attrs.frozen
class PullResult:
    """A request whose destination blocks now hold exactly P's state."""

    request_id: str
    engine: str
    bytes: int
    descriptors: int
    seconds: float
    #: P ranks read from, and P ranks told the request is done.
    source_ranks: tuple[int, ...]
    notified_ranks: tuple[int, ...]
    #: The bound plan (descriptors, statistics) for inspection and logging.
    plan: TransferPlan = attrs.field(repr=False)

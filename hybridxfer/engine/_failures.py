"""Per-request failure on the decode side: the error a pull raises, and the record the
scheduler drains.

Why both: the task that awaited ``pull`` gets an exception it cannot ignore, and the
scheduler — which usually runs elsewhere, once per step — gets the same facts from
:meth:`DecodeConnector.failed_requests`, so a failed request is recomputed rather than
decoded from garbage. vLLM's hybrid path once reported such requests as received; we
never do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from hybridxfer.errors import TransferError

__all__ = ["FailedRequest", "FailurePolicy", "FailureReason", "RequestFailed"]

#: ``plan``: refused before any byte moved (bad block IDs, incompatible layouts, no peer);
#: ``transfer``: a read failed; ``timeout``: it missed its deadline; ``cancelled``: the
#: engine cancelled the pull; ``restarted``: a P rank is another incarnation than the one
#: the plan was bound to (:class:`~hybridxfer.errors.PeerRestartedError` in the cause
#: chain). In every case the destination blocks are invalid (but see ``intact_tokens``).
FailureReason = Literal["plan", "transfer", "timeout", "cancelled", "restarted"]

#: What the engine wants to hear about a failed pull: ``fail`` — the blocks are invalid;
#: ``recompute`` — also how many leading tokens arrived intact, so it recomputes the rest.
FailurePolicy = Literal["fail", "recompute"]


@attrs.frozen
class FailedRequest:
    """One request whose destination blocks must not be used (recompute or abort it)."""

    request_id: str
    engine: str
    reason: FailureReason
    message: str
    #: D's KV group name -> block IDs that may hold partial or stale data.
    invalid_blocks: Mapping[str, tuple[int, ...]]
    source_rank: int | None = None
    #: ``recompute`` policy: leading tokens whose every byte (every layer, group and source
    #: rank) is known to have landed — the engine may keep blocks holding only those and
    #: recompute from there. Always 0 for a model with SSM state unless everything landed
    #: (see ``hybridxfer.engine._intact``). ``None`` under the ``fail`` policy.
    intact_tokens: int | None = None


class RequestFailed(TransferError):
    """``DecodeConnector.pull`` failed; ``failure`` says which blocks are invalid and why.

    The original error (a :class:`~hybridxfer.errors.TransferError`,
    :class:`~hybridxfer.errors.BlockIdError`, ...) is ``__cause__``.
    """

    def __init__(self, failure: FailedRequest) -> None:
        super().__init__(f"{failure.reason}: {failure.message}", request_id=failure.request_id,
                         source_rank=failure.source_rank, invalid_blocks=dict(failure.invalid_blocks))
        self.failure = failure

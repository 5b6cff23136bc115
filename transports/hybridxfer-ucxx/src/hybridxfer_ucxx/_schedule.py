"""Which UCX messages carry which rows — computed identically by P and D.

Why not one message per row: each tag message costs tens of µs of Python and UCX
overhead, so 10^5 small rows would take seconds. Rows of at least ``zero_copy_bytes``
travel as one message each, straight from P's region into D's region (no copy). Smaller
rows are packed, in order, into messages of at most ``pack_bytes``: P gathers them into
one buffer and D scatters them out — one memcpy per byte on each side, far cheaper
than a message per row. Both sides derive the same schedule from the lengths alone.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["Message", "schedule"]

I64Array = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class Message:
    """One tag message: a single zero-copy row, or a pack of small rows (``packed``)."""

    rows: I64Array
    packed: bool
    nbytes: int


def schedule(length: I64Array, zero_copy_bytes: int, pack_bytes: int) -> list[Message]:
    messages: list[Message] = []
    pending: list[int] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            messages.append(Message(np.array(pending, dtype=np.int64), True, pending_bytes))
            pending, pending_bytes = [], 0

    for row, size in enumerate(length.tolist()):
        if size == 0:
            continue
        if size >= zero_copy_bytes:
            flush()
            messages.append(Message(np.array([row], dtype=np.int64), False, size))
            continue
        if pending_bytes + size > pack_bytes:
            flush()
        pending.append(row)
        pending_bytes += size
    flush()
    return messages

"""The typed error tree of hybridxfer.

Every failure a user can see is one of these; native errors (socket, NIXL, UCXX) are
translated at the transport boundary and kept as ``__cause__``::

    HybridXferError
    ├── LayoutError                 a layout file or value is wrong (every problem at once)
    ├── IncompatibleLayoutsError    P and D layouts cannot be paired (model, dtype, TP, geometry)
    ├── BlockIdError                block IDs of a request are out of range, duplicated, mismatched
    ├── InvalidArgumentError        an argument of a public call is out of its domain (a ValueError)
    ├── RegistrationError           memory cannot be registered (twice, not contiguous, wrong kind)
    ├── TransportNotFoundError      no transport registered under that name
    ├── UnsupportedModelError       (hybridxfer.hf) a config.json of an unknown architecture
    ├── RenderError                 (hybridxfer.render) a picture could not be written
    └── TransportError              something went wrong moving bytes
        ├── ConnectError            could not reach or handshake with a peer
        │   └── AuthenticationError the peer refused our secret (or we refused theirs)
        ├── NotStartedError         used before it was started (``async with``)
        ├── ClosedTransportError    used after ``aclose()``
        ├── BrokenTransportError    the connection died; the transport must be reconnected
        │   ├── PeerGoneError       the peer left the cluster directory (raised by discovery)
        │   └── PeerRestartedError  the peer at that address is another incarnation now
        ├── ProtocolError           a peer sent a malformed or unexpected frame
        ├── UnsupportedOperationError the transport does not offer that operation (e.g. writes)
        └── TransferError           a transfer failed; says which request/rank/blocks
            ├── TransferTimeout     a transfer did not finish within its deadline (a ``TimeoutError``)
            ├── GrantRefusedError   the serving peer holds no live grant of ours for those bytes
            ├── StreamedTransferError a streamed transfer failed; names its invalid layers and blocks
            └── RequestFailed       (hybridxfer.engine) a pull failed; carries the failure record

Why a tree: callers catch the level they can act on — an engine recomputes on
``TransferError`` and re-handshakes on ``BrokenTransportError``; a CLI prints any
``HybridXferError`` without a traceback. Each layer keeps the most specific class it can
and chains the error it translated as ``__cause__``: a transport's read raises
``BrokenTransportError`` when its connection died, and the executor's ``TransferError``
for the request (``TransferTimeout`` stays one) carries it as ``__cause__``.

Two classes also derive from a builtin so that code written against the builtin keeps
working: ``TransferTimeout`` is a ``TimeoutError`` (what ``anyio.fail_after`` raises) and
``RegistrationError`` is a ``ValueError`` (what registering bad memory raised before it had
a class of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "AuthenticationError",
    "BlockIdError",
    "BrokenTransportError",
    "ClosedTransportError",
    "ConnectError",
    "GrantRefusedError",
    "HybridXferError",
    "IncompatibleLayoutsError",
    "InvalidArgumentError",
    "LayoutError",
    "LayoutProblem",
    "NotStartedError",
    "PeerGoneError",
    "PeerRestartedError",
    "ProtocolError",
    "RegistrationError",
    "StreamedTransferError",
    "TransferError",
    "TransferTimeout",
    "TransportError",
    "TransportNotFoundError",
    "UnsupportedOperationError",
]


class HybridXferError(Exception):
    """Root of every error hybridxfer raises on purpose."""


@attrs.frozen
class LayoutProblem:
    """One thing wrong with a layout: where it is and why it is wrong.

    ``path`` is the key path inside the document (``regions[2].members``), ``line`` the
    1-based line in ``file`` when the source format lets us know it.
    """

    message: str
    file: str | None = None
    line: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = self.file or "<layout>"
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            where += f": {self.path}"
        return f"{where}: {self.message}"


class LayoutError(HybridXferError):
    """A layout (file or value) is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[LayoutProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [LayoutProblem(problems)]
        self.problems: tuple[LayoutProblem, ...] = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{len(self.problems)} layout {noun}:\n{lines}")


class IncompatibleLayoutsError(HybridXferError):
    """The source and destination layouts cannot be paired (checked before any byte moves)."""


class BlockIdError(HybridXferError):
    """A request's block IDs are invalid for the layout (range, duplicates, counts)."""


class InvalidArgumentError(HybridXferError, ValueError):
    """An argument of a public call lies outside what it accepts (a count below one, an unknown
    policy name, a name too long for the wire). Raised before anything was done."""


class RegistrationError(HybridXferError, ValueError):
    """Memory cannot be registered: its name is taken, it is not one contiguous writable
    range, or the transport cannot address its kind. Nothing was registered."""


class TransportNotFoundError(HybridXferError):
    """No transport is registered under the requested name."""


class TransportError(HybridXferError):
    """Base of every failure while moving bytes or talking to a peer."""


class ConnectError(TransportError):
    """A peer could not be reached, or the handshake with it failed."""


class AuthenticationError(ConnectError):
    """The shared secret did not match; nothing was served."""


class NotStartedError(TransportError):
    """The transport (or agent) was used before it was started with ``async with``.

    Distinct from :class:`ClosedTransportError`: the fix is to enter the object, not to
    open a new one."""


class ClosedTransportError(TransportError):
    """The transport (or agent) was used after ``aclose()``."""


class BrokenTransportError(TransportError):
    """The connection to a peer died; further use needs a reconnect."""


class PeerGoneError(BrokenTransportError):
    """A peer left the cluster directory (its lease expired, it withdrew, or it restarted as
    another incarnation) while something still depended on it."""


class PeerRestartedError(BrokenTransportError):
    """The peer reached at a known address is not the one we handshook with: it restarted
    (another process, another incarnation) and its memory is not the memory our plans were
    bound to. Raised before any byte is read from the new peer.

    ``old_incarnation`` is the one the handshake saw, ``new_incarnation`` the one that
    answers now (empty when only the transport could tell the two apart).
    """

    def __init__(self, message: str, *, peer: str, old_incarnation: str, new_incarnation: str) -> None:
        self.peer = peer
        self.old_incarnation = old_incarnation
        self.new_incarnation = new_incarnation
        super().__init__(f"{message}: peer {peer!r} was incarnation {old_incarnation!r}, "
                         f"is now {new_incarnation!r}")


class ProtocolError(TransportError):
    """A peer sent a frame that violates the wire protocol."""


class UnsupportedOperationError(TransportError, NotImplementedError):
    """The transport does not offer this operation (``capabilities`` says so), e.g. a
    ``write`` on a transport whose ``capabilities.writes`` is false. Also a
    ``NotImplementedError``. Nothing was moved."""


class TransferError(TransportError):
    """A transfer failed. Names what failed so the caller can recompute exactly that.

    The destination bytes of the failed request are *not valid*: some may have been
    written, others not. ``invalid_blocks`` maps each destination group to the block IDs
    that must not be used.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        source_rank: int | None = None,
        invalid_blocks: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.source_rank = source_rank
        self.invalid_blocks: dict[str, tuple[int, ...]] = dict(invalid_blocks or {})
        parts = [message]
        if request_id is not None:
            parts.append(f"request={request_id!r}")
        if source_rank is not None:
            parts.append(f"source_rank={source_rank}")
        if self.invalid_blocks:
            groups = ", ".join(f"{g}:{len(b)} blocks" for g, b in sorted(self.invalid_blocks.items()))
            parts.append(f"invalid destination blocks: {groups}")
        super().__init__("; ".join(parts))


class TransferTimeout(TransferError, TimeoutError):
    """A transfer did not complete within its deadline; the peer may be stalled.

    Also a ``TimeoutError``, so ``except TimeoutError`` around a deadline catches it too.
    """


class StreamedTransferError(TransferError):
    """A streamed transfer (:meth:`~hybridxfer.execute.Agent.prepare_stream`) failed part-way.

    Layers land one by one, so unlike a bulk failure part of the request is good:
    ``landed_layers`` were reported landed (every byte of theirs is in place) and stay so;
    ``invalid_layers`` were not and must be recomputed. ``invalid_blocks`` maps each D KV
    group to the block IDs holding any planned byte not known to have landed — exactly
    those, so a block that only landed layers write is not in it. The cause (a failed
    read or write, a :class:`TransferTimeout`, a P rank's abort) is ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        source_rank: int | None = None,
        invalid_blocks: dict[str, tuple[int, ...]] | None = None,
        invalid_layers: Sequence[str] = (),
        landed_layers: Sequence[str] = (),
        timed_out: bool = False,
    ) -> None:
        self.invalid_layers: tuple[str, ...] = tuple(invalid_layers)
        self.landed_layers: tuple[str, ...] = tuple(landed_layers)
        #: True when a deadline (the stream's or a wait's) ended it.
        self.timed_out = timed_out
        super().__init__(f"{message}; {len(self.invalid_layers)} layers invalid, {len(self.landed_layers)} landed",
                         request_id=request_id, source_rank=source_rank, invalid_blocks=invalid_blocks)


class GrantRefusedError(TransferError):
    """The serving peer requires grants and none of its live grants to us covers the bytes
    we asked for (never granted, revoked, or its lease ran out); nothing was sent.

    Raised on the reading side; the serving side logged the peer, the range and why.
    Like any :class:`TransferError` the destination blocks are not valid.
    """

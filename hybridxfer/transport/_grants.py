"""Request-scoped grants: which byte ranges of our registered memory each peer may read.

Why: a two-sided transport serves whatever an authenticated peer asks for, so without
grants any decoder holding the shared secret (or a certificate of our CA) can read every
request in P's memory, other users' included. With grants required, the serving side
checks every row of a READ against the live grants of the asking peer *before* a byte is
sent, and refuses the whole read otherwise.

A grant is (peer identity, byte ranges, request id, expiry). The peer identity is what
the transport authenticated: under TLS the client certificate's subject, otherwise the
client name proven with the shared secret (which any holder of the secret may claim, see
``docs/security.md``). Ranges index our regions in registration order, the order a READ's
``src_region`` column uses.

Checking is vectorised: each peer's live grants are merged once into sorted, disjoint
ranges per region, and each row of a READ is located with ``np.searchsorted`` — O(rows ·
log ranges) — and must lie inside a single merged range. Expired grants are dropped on
every call; the clock is injectable so leases are tested without sleeping.

Writes (push mode: a peer fills our memory) are checked the same way against *write*
grants (``access="write"``), which a read grant never implies: a transport that requires
grants refuses every WRITE that no write grant covers — a prefill worker, which expects
none, refuses them all.

A refusal travels to the reader as a ``READ_ERR`` whose reason starts with
:data:`REFUSAL_PREFIX`, which the reader raises as
:class:`~hybridxfer.errors.GrantRefusedError`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Literal

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError

__all__ = ["Access", "ByteRanges", "Grant", "GrantTable", "REFUSAL_PREFIX", "ReadAuthorizer", "grant_table"]

Int64Array = npt.NDArray[np.int64]

#: What a grant allows: reading ranges of our memory, or writing into them.
Access = Literal["read", "write"]

#: How a serving side's refusal reason begins on the wire, so the reader can type it.
REFUSAL_PREFIX = "grant refused: "

#: The serving side's hook: ``(peer identity, region, offset, length) -> reason`` (``None``:
#: every row may be served) — for a READ the rows it asks for, for a WRITE those it fills.
ReadAuthorizer = Callable[[str, Int64Array, Int64Array, Int64Array], str | None]


def _int64(values: object) -> Int64Array:
    return np.ascontiguousarray(values, dtype=np.int64).reshape(-1)


@attrs.frozen(eq=False)
class ByteRanges:
    """Byte ranges of our memory: parallel ``int64`` columns (region index, offset, length).

    :meth:`merged` sorts them by (region, offset) and joins ranges that overlap or touch,
    which is the form a check needs.
    """

    region: Int64Array = attrs.field(converter=_int64)
    offset: Int64Array = attrs.field(converter=_int64)
    length: Int64Array = attrs.field(converter=_int64)

    def __attrs_post_init__(self) -> None:
        n = len(self.length)
        if len(self.region) != n or len(self.offset) != n:
            raise InvalidArgumentError(f"byte range columns differ in length: region {len(self.region)}, "
                                       f"offset {len(self.offset)}, length {n}")
        bad = np.flatnonzero((self.region < 0) | (self.offset < 0) | (self.length < 0))
        if len(bad):
            i = int(bad[0])
            raise InvalidArgumentError(f"byte range {i} is negative: region {int(self.region[i])}, "
                                       f"offset {int(self.offset[i])}, length {int(self.length[i])}")

    @classmethod
    def empty(cls) -> ByteRanges:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z)

    @classmethod
    def concat(cls, parts: list[ByteRanges]) -> ByteRanges:
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.region for p in parts]), np.concatenate([p.offset for p in parts]),
                   np.concatenate([p.length for p in parts]))

    def __len__(self) -> int:
        return int(self.length.shape[0])

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum()) if len(self) else 0

    def merged(self) -> ByteRanges:
        """Sorted by (region, offset), empty ranges dropped, overlapping or touching ones joined."""
        keep = self.length > 0
        region, start, end = self.region[keep], self.offset[keep], self.offset[keep] + self.length[keep]
        if len(region) == 0:
            return ByteRanges.empty()
        order = np.lexsort((start, region))
        region, start, end = region[order], start[order], end[order]
        # running maximum of ends within a region: a range starts a new run unless it begins
        # at or before the furthest end reached so far in its region
        new_region = np.ones(len(region), dtype=bool)
        new_region[1:] = region[1:] != region[:-1]
        reach = end.copy()
        for idx in _region_slices(new_region):
            reach[idx] = np.maximum.accumulate(end[idx])
        starts = new_region.copy()
        starts[1:] |= start[1:] > reach[:-1]
        first = np.flatnonzero(starts)
        last = np.append(first[1:], len(region)) - 1
        return ByteRanges(region[first], start[first], reach[last] - start[first])


def _region_slices(new_region: npt.NDArray[np.bool_]) -> list[slice]:
    bounds = np.append(np.flatnonzero(new_region), len(new_region))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@attrs.frozen(eq=False)
class Grant:
    """Peer ``peer`` may read (``access="write"``: write) ``ranges`` of our memory for
    request ``request_id`` until ``expires_at`` (the table's clock; ``None``: until revoked)."""

    request_id: str
    peer: str
    ranges: ByteRanges = attrs.field(repr=False)
    expires_at: float | None = None
    access: Access = "read"

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@attrs.frozen(eq=False)
class _Merged:
    """One peer's live grants merged: sorted by (region, start), with one sort key per range
    (``region * span + start``, ``span`` past every end) so a whole READ is located by one
    ``searchsorted``; ``keys`` is None where the key would overflow (then per region)."""

    ranges: ByteRanges
    by_region: dict[int, tuple[Int64Array, Int64Array]]
    valid_until: float
    span: int
    keys: Int64Array | None


class GrantTable:
    """The grants a serving transport checks reads against. Thread-safe (the serving loop
    reads it, an engine's thread may grant).

    ``clock`` (default ``time.monotonic``) says what "now" is for leases; tests pass their own.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._grants: dict[str, list[Grant]] = {}  # request id -> its grants
        # (peer, access) -> cache, dropped whenever that peer's grants change
        self._merged: dict[tuple[str, Access], _Merged] = {}
        self._lock = threading.Lock()

    def grant(self, request_id: str, peer: str, ranges: ByteRanges, *, lease: float | None = None,
              access: Access = "read") -> Grant:
        """Let ``peer`` read ``ranges`` for ``request_id``, for ``lease`` seconds (``None``:
        until :meth:`revoke`). Granting again adds to what the peer may read.

        ``access="write"``: let it *write* them instead (push mode: the decode side grants
        the prefill peer its destination blocks); a read grant never allows writing."""
        if not peer:
            raise InvalidArgumentError("a grant needs a peer identity")
        if access not in ("read", "write"):
            raise InvalidArgumentError(f"access must be 'read' or 'write', not {access!r}")
        if lease is not None and not (lease > 0 and math.isfinite(lease)):
            raise InvalidArgumentError(f"lease must be a positive number of seconds, got {lease!r}")
        with self._lock:
            now = self._clock()
            grant = Grant(request_id, peer, ranges.merged(), None if lease is None else now + lease, access)
            self._grants.setdefault(request_id, []).append(grant)
            self._forget(peer)
            return grant

    def _forget(self, peer: str) -> None:
        self._merged.pop((peer, "read"), None)
        self._merged.pop((peer, "write"), None)

    def revoke(self, request_id: str, peer: str | None = None) -> int:
        """Withdraw the grants of ``request_id`` (of one ``peer``, or all); returns how many."""
        with self._lock:
            grants = self._grants.get(request_id, [])
            gone = [g for g in grants if peer is None or g.peer == peer]
            kept = [g for g in grants if not (peer is None or g.peer == peer)]
            if kept:
                self._grants[request_id] = kept
            else:
                self._grants.pop(request_id, None)
            for g in gone:
                self._forget(g.peer)
            return len(gone)

    def grants(self, peer: str | None = None) -> tuple[Grant, ...]:
        """The live grants (of one peer, or all), oldest first per request."""
        with self._lock:
            self._expire(self._clock())
            return tuple(g for gs in self._grants.values() for g in gs if peer is None or g.peer == peer)

    def _expire(self, now: float) -> None:
        for request_id in [r for r, gs in self._grants.items() if any(not g.live(now) for g in gs)]:
            grants = self._grants[request_id]
            for g in grants:
                if not g.live(now):
                    self._forget(g.peer)
            kept = [g for g in grants if g.live(now)]
            if kept:
                self._grants[request_id] = kept
            else:
                del self._grants[request_id]

    def _peer_ranges(self, peer: str, access: Access, now: float) -> _Merged:
        cached = self._merged.get((peer, access))
        if cached is not None and now < cached.valid_until:
            return cached
        self._expire(now)
        mine = [g for gs in self._grants.values() for g in gs if g.peer == peer and g.access == access]
        merged = ByteRanges.concat([g.ranges for g in mine]).merged()
        by_region: dict[int, tuple[Int64Array, Int64Array]] = {}
        if len(merged):
            new_region = np.ones(len(merged), dtype=bool)
            new_region[1:] = merged.region[1:] != merged.region[:-1]
            for idx in _region_slices(new_region):
                by_region[int(merged.region[idx.start])] = (merged.offset[idx], merged.offset[idx] + merged.length[idx])
        valid_until = min((g.expires_at for g in mine if g.expires_at is not None), default=math.inf)
        span = int((merged.offset + merged.length).max()) + 1 if len(merged) else 1
        regions = int(merged.region.max()) + 1 if len(merged) else 1
        keys = merged.region * span + merged.offset if regions * span < 1 << 62 else None
        entry = _Merged(merged, by_region, valid_until, span, keys)
        self._merged[(peer, access)] = entry
        return entry

    def authorize(self, peer: str, region: Int64Array, offset: Int64Array, length: Int64Array,
                  access: Access = "read") -> str | None:
        """Why ``peer`` may not read these rows (the first row outside its grants), or ``None``.

        Every row must lie inside one live granted range of ``peer`` (empty rows pass).
        The reason names the peer, the row, its region index and byte range — never a secret.
        ``access="write"`` checks write grants (:meth:`authorize_write`).
        """
        region = np.asarray(region, dtype=np.int64)
        offset = np.asarray(offset, dtype=np.int64)
        length = np.asarray(length, dtype=np.int64)
        what = "grant" if access == "read" else "write grant"
        with self._lock:
            entry = self._peer_ranges(peer, access, self._clock())
        if not entry.by_region:
            if len(length) and bool((length > 0).any()):
                i = int(np.flatnonzero(length > 0)[0])
                return (f"{REFUSAL_PREFIX}peer {peer!r} holds no live {what} "
                        f"(row {i}: region {int(region[i])} bytes [{int(offset[i])}, {int(offset[i] + length[i])}))")
            return None
        ok = length <= 0
        if entry.keys is not None:
            ranges = entry.ranges
            usable = (offset >= 0) & (offset < entry.span) & (region >= 0) & (region <= int(ranges.region[-1]))
            at = np.searchsorted(entry.keys, np.where(usable, region * entry.span + offset, -1), side="right") - 1
            first = np.maximum(at, 0)
            ok |= usable & (at >= 0) & (ranges.region[first] == region) & (
                offset + length <= ranges.offset[first] + ranges.length[first])
            region_loop: list[int] = []
        else:
            region_loop = np.unique(region[~ok]).tolist()
        for r in region_loop:
            spans = entry.by_region.get(int(r))
            rows = np.flatnonzero((region == r) & ~ok)
            if spans is None:
                continue
            starts, ends = spans
            at = np.searchsorted(starts, offset[rows], side="right") - 1
            inside = (at >= 0) & (offset[rows] + length[rows] <= ends[np.maximum(at, 0)])
            ok[rows[inside]] = True
        if bool(ok.all()):
            return None
        i = int(np.flatnonzero(~ok)[0])
        return (f"{REFUSAL_PREFIX}row {i}: region {int(region[i])} bytes [{int(offset[i])}, "
                f"{int(offset[i] + length[i])}) lies outside every live {what} of peer {peer!r}")

    def authorize_write(self, peer: str, region: Int64Array, offset: Int64Array, length: Int64Array) -> str | None:
        """:meth:`authorize` for a WRITE into these rows of our memory (write grants only)."""
        return self.authorize(peer, region, offset, length, access="write")

    def covers(self, peer: str, descriptors: Descriptors) -> str | None:
        """:meth:`authorize` for the source side of ``descriptors`` (rows read from us)."""
        return self.authorize(peer, descriptors.src_region, descriptors.src_offset, descriptors.length)


def grant_table(transport: object) -> tuple[GrantTable | None, bool]:
    """The grant table a transport checks reads against, looking through wrappers
    (``inner``), and whether it enforces it: ``(table, required)``; ``(None, False)`` for a
    transport without one (loopback, nixl, third-party ones).

    Optional attributes, not part of the transport contract: ``grants`` (a
    :class:`GrantTable`) and ``require_grants`` (bool).
    """
    current: object = transport
    for _ in range(16):  # wrappers nest a few deep at most; never loop on a cycle
        table = getattr(current, "grants", None)
        if isinstance(table, GrantTable):
            return table, bool(getattr(current, "require_grants", False))
        current = getattr(current, "inner", None)
        if current is None:
            break
    return None, False

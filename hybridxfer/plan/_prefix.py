"""Prefix-cache hits on D: the leading blocks D already holds, which a plan leaves alone.

D's prefix cache says, per KV group, how many leading tokens of the request it holds
valid. Hits are counted in tokens, so P's block size plays no part; D keeps its cache in
whole D blocks, so a hit that ends inside a D block leaves that block to be moved whole
(its tail would otherwise be stale). State groups (conv/SSM) never take a hit: the
running state at the end of the cached prefix is not the request's final state, so the
final state always moves. In a sliding-window group the hit counts the same way; blocks
that left the window are not moved anyway, so a hit there only spares the window's
blocks D holds.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import BlockIdError
from hybridxfer.layout import RankLayout
from hybridxfer.plan._batch import Batch

__all__ = ["CachedPrefix", "CachedTokens", "cached_tokens", "check_hits", "spared_bytes"]

#: What a caller says D holds: one token count for every group, or one per D KV group.
CachedTokens = int | Mapping[str, int]


@attrs.frozen
class CachedPrefix:
    """What a plan leaves untouched in one D KV group because D already holds it.

    ``requested_tokens`` is the hit D reported; ``kept_tokens`` the whole D blocks it
    covers (the tokens the plan does not move); ``blocks`` their IDs, never written.
    When the two differ, the hit ends inside D's block ``kept_tokens // block_tokens``,
    which the plan moves whole.
    """

    group: str
    requested_tokens: int
    kept_tokens: int
    block_tokens: int
    blocks: tuple[int, ...]

    @property
    def ends_inside_block(self) -> bool:
        return self.requested_tokens != self.kept_tokens

    def describe(self) -> str:
        """One line for people: what is kept, and which block moves whole if any."""
        n = self.kept_tokens // self.block_tokens
        text = (f"D group {self.group!r}: {self.requested_tokens} tokens cached, keeps {self.kept_tokens} "
                f"({n} block{'' if n == 1 else 's'} of {self.block_tokens})")
        if self.ends_inside_block:
            index = self.kept_tokens // self.block_tokens
            text += f"; the hit ends inside block #{index} (tokens {self.kept_tokens}..), which moves whole"
        return text


def cached_tokens(value: CachedTokens | None, dst: RankLayout) -> dict[str, int]:
    """Per D group, the tokens D holds (positive counts only; empty: no hit anywhere).

    A single count applies to every group of D's layout. Raises
    :class:`~hybridxfer.errors.BlockIdError` for a group D's layout lacks, a count that is
    not an integer, or a negative one, naming the group and the count.
    """
    if value is None:
        return {}
    groups = [g.name for g in dst.layout.groups]
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(groups))
        if unknown:
            raise BlockIdError(f"dst_cached_tokens: D has no KV group(s) {unknown} "
                               f"(counts {[value[g] for g in unknown]}); its groups are {groups}")
        items = list(value.items())
    else:
        items = [(g, value) for g in groups]
    out: dict[str, int] = {}
    for group, given in items:
        try:
            if isinstance(given, bool):
                raise TypeError
            count = operator.index(given)
        except TypeError:
            raise BlockIdError(f"dst_cached_tokens for D group {group!r} must be an integer, got {given!r}") from None
        if count < 0:
            raise BlockIdError(f"dst_cached_tokens for D group {group!r} is {count}: it must be >= 0")
        if count:
            out[group] = count
    return out


def spared_bytes(batch: Batch, tokens: int, skip: int, chunks: int, chunk_tokens: int,
                 kinds: int) -> npt.NDArray[np.int64]:
    """Bytes per layer kind ``batch`` would move without D's hit but does not move.

    ``chunks`` token chunks cover the request, the first ``skip`` of them inside D's hit.
    The request's last chunk (the only partial one) is never inside a hit, so the chunks a
    hit spares are all full ones; blocks that left a sliding window are not counted (they
    would not move anyway).
    """
    base = 0 if batch.window is None else max(0, tokens - batch.window) // chunk_tokens
    i, parts = batch.spread

    def share(first: int) -> int:
        count = max(0, chunks - first)
        return count * (i + 1) // parts - count * i // parts

    spared = share(base) - share(max(base, skip))
    per_chunk = np.bincount(batch.kind[batch.runs.job], weights=batch.runs.length,
                            minlength=kinds).astype(np.int64)
    return per_chunk * spared


def check_hits(aliasing_groups: tuple[tuple[str, str], ...], hits: Mapping[str, int],
               prefixes: Mapping[str, CachedPrefix], used_dst: Mapping[str, set[int]],
               request_tokens: int | None) -> None:
    """Hits on state groups stay within the request; kept blocks are never overwritten.

    A state group's hit spares nothing (its final state always moves), but a count beyond
    the request is still a bug upstream. A kept block that another group writes through
    shared memory would corrupt D's cache, so that is refused like any aliasing write.
    """
    for group, count in sorted(hits.items()):
        if group not in prefixes and request_tokens is not None and count > request_tokens:
            raise BlockIdError(f"D group {group!r}: dst_cached_tokens={count} exceeds the request's "
                               f"{request_tokens} tokens")
    for a, b in aliasing_groups:
        for kept_group, writer in ((a, b), (b, a)):
            if kept_group not in prefixes:
                continue
            clash = set(prefixes[kept_group].blocks) & used_dst.get(writer, set())
            if clash:
                raise BlockIdError(
                    f"D group {kept_group!r} holds block {min(clash)} cached, but group {writer!r} shares its "
                    "memory and writes that block: the transfer would overwrite D's cached prefix")

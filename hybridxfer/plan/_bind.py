"""Bind a compiled template to one request's block IDs, producing a :class:`TransferPlan`.

Attention-like groups are bridged by token position: token ``t`` lives in P's logical
block ``t // bs_P``, kernel sub-block ``(t % bs_P) // kbs_P``, slot ``t % kbs_P`` — and
likewise on D with D's own sizes — so P and D may use different logical *and* kernel
block sizes. State groups carry one running-state block each. Everything is numpy over
chunks; no Python loop runs per descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import BlockIdError
from hybridxfer.layout import RankLayout, is_token_spec
from hybridxfer.plan._batch import Batch, RunTable
from hybridxfer.plan._job import Job
from hybridxfer.plan._plan import PlanStatistics, TransferPlan
from hybridxfer.plan._prefix import CachedPrefix, CachedTokens, cached_tokens, check_hits, spared_bytes
from hybridxfer.plan._runs import Runs

__all__ = ["CompiledTemplate", "TaggedRows", "bind", "bind_tagged"]

Int64Array = npt.NDArray[np.int64]
BlockTable = Mapping[str, Sequence[int] | Int64Array]
#: Bound rows of one batch and the bytes they move per layer kind (``template.kinds`` order).
KindedRows = tuple[Descriptors, Int64Array]


class CompiledTemplate(Protocol):
    """What binding reads of a compiled template; :class:`~hybridxfer.plan.PlanTemplate` is one.

    Binding depends on this shape, not on the compiler, so the template module may call
    :func:`bind` without the two importing each other.
    """

    @property
    def src(self) -> tuple[RankLayout, ...]: ...
    @property
    def dst(self) -> RankLayout: ...
    @property
    def src_tp(self) -> int: ...
    @property
    def src_region_names(self) -> tuple[str, ...]: ...
    @property
    def coalesce(self) -> bool: ...
    @property
    def chunk_tokens(self) -> int: ...
    @property
    def jobs(self) -> tuple[Job, ...]: ...
    @property
    def notify_ranks(self) -> tuple[int, ...]: ...
    @property
    def aliasing_groups(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def state_padding(self) -> tuple[tuple[str, int], ...]: ...
    @property
    def batches(self) -> tuple[Batch, ...]: ...
    @property
    def kinds(self) -> tuple[str, ...]: ...

    def tail_runs(self, job: Job, tokens: int) -> Runs: ...


@attrs.frozen(eq=False)
class TaggedRows:
    """One batch's bound rows before coalescing, each tagged with what it depends on.

    Layer-wise streaming (:mod:`._stream`) hands rows out as the layers they read become
    final, so it needs, per row, the job (hence the layer), the end of the token chunk it
    reads (``-1``: a running state, final only once the whole prompt is consumed) and the
    D block it writes.
    """

    batch: Batch
    rows: Descriptors
    job: Int64Array
    token_end: Int64Array
    dst_block: Int64Array


def bind(
    template: CompiledTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    *,
    num_tokens: int | None = None,
    dst_cached_tokens: CachedTokens | None = None,
) -> TransferPlan:
    """Descriptors for one request.

    ``src_blocks`` / ``dst_blocks`` map each KV group name (of P's and D's layout) to the
    request's logical block IDs in that group. Attention groups: blocks in token order;
    IDs of blocks outside a sliding window may be ``-1``. State groups: the last ID is the
    running-state block. ``num_tokens``: tokens to move (default: what both sides cover;
    when both use the same logical block size and D lists fewer blocks, D's blocks are
    taken to hold P's *last* blocks — a partial prefix-cache hit).

    ``dst_cached_tokens``: leading tokens of the request D already holds valid (its own
    prefix cache), one count for every group or one per D KV group. ``dst_blocks`` then
    lists D's whole table from token 0; the plan leaves the whole D blocks inside the hit
    untouched (a hit ending inside a block moves that block whole), still moves every
    running state, and says what it kept in :attr:`TransferPlan.cached_prefix` and
    ``statistics.skipped_cached_bytes`` (docs/concepts.md, "Prefix-cache hits on D").

    Raises :class:`~hybridxfer.errors.BlockIdError` before any byte moves when IDs are out
    of range, duplicated, missing, the two sides' token counts cannot be bridged, or a
    cached count is negative, names a group D lacks, or exceeds the request's tokens.
    """
    return _bind(template, src_blocks, dst_blocks, num_tokens, dst_cached_tokens, None)


def bind_tagged(
    template: CompiledTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    *,
    num_tokens: int | None = None,
    dst_cached_tokens: CachedTokens | None = None,
) -> tuple[TransferPlan, list[TaggedRows], int | None]:
    """:func:`bind`, plus every batch's uncoalesced rows with their tags (source rank order)
    and the request's tokens as the token groups bridged them (``None``: no token group)."""
    tagged: dict[int, list[TaggedRows]] = {}
    tokens: list[int] = []
    plan = _bind(template, src_blocks, dst_blocks, num_tokens, dst_cached_tokens, (tagged, tokens))
    return plan, [part for rank in sorted(tagged) for part in tagged[rank]], max(tokens, default=None)


def _bind(
    template: CompiledTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    num_tokens: int | None,
    dst_cached_tokens: CachedTokens | None,
    tagged: tuple[dict[int, list[TaggedRows]], list[int]] | None,
) -> TransferPlan:
    src0, dst = template.src[0], template.dst
    src_tab = _tables(src_blocks, src0, "P", _windowed(template, 0))
    dst_tab = _tables(dst_blocks, dst, "D", _windowed(template, 1))
    hits = cached_tokens(dst_cached_tokens, dst)
    prefixes: dict[str, CachedPrefix] = {}
    skipped = np.zeros(len(template.kinds), dtype=np.int64)
    chunks: dict[tuple[str, str], tuple[Int64Array, ...]] = {}
    states: dict[tuple[str, str], tuple[int, int]] = {}
    used_dst: dict[str, set[int]] = {}
    rows: dict[int, list[KindedRows]] = {}
    for batch in template.batches:
        key = (batch.src_group, batch.dst_group)
        if batch.has_tokens:
            if key not in chunks:
                chunks[key] = _token_chunks(template, src_tab, dst_tab, key, num_tokens, used_dst,
                                            hits.get(key[1], 0), prefixes)
            out = _token_rows(template, batch, chunks[key])
            if tagged is not None:
                tagged[1].append(int(chunks[key][0][0]))
                tagged[0].setdefault(batch.src_rank, []).append(
                    TaggedRows(batch, out[0][0], *_token_tags(template, batch, chunks[key])))
            if hits:
                tokens, skip = chunks[key][0].tolist()
                skipped += spared_bytes(batch, tokens, skip, int(chunks[key][1].shape[0]),
                                        template.chunk_tokens, len(template.kinds))
        else:
            if key not in states:
                states[key] = _state_blocks(src_tab, dst_tab, key, used_dst, src0, dst)
            sb, db = states[key]
            out = [_rows(batch, batch.runs, batch.src_base + sb * batch.src_page,
                         batch.dst_base + db * batch.dst_page, len(template.kinds))]
            if tagged is not None:
                n = len(batch.runs.job)
                tagged[0].setdefault(batch.src_rank, []).append(TaggedRows(
                    batch, out[0][0], batch.runs.job, np.full(n, -1, dtype=np.int64),
                    np.full(n, db, dtype=np.int64)))
        rows.setdefault(batch.src_rank, []).extend(out)
    _check_aliasing(template, used_dst)
    if hits:
        request = num_tokens if num_tokens is not None else max(
            (int(c[0][0]) for c in chunks.values()), default=None)
        check_hits(template.aliasing_groups, hits, prefixes, used_dst, request)
    return _assemble(template, rows, used_dst, prefixes, int(skipped.sum()))


def _token_rows(template: CompiledTemplate, batch: Batch, chunk_arrays: tuple[Int64Array, ...]) -> list[KindedRows]:
    """Rows of a token batch: every job's runs at every chunk of the request it moves."""
    tokens, s_blk, s_sub, s_tok, d_blk, d_sub, d_tok = chunk_arrays
    g = template.chunk_tokens
    lo, hi = _chunk_range(template, batch, chunk_arrays)
    if (lo, hi) != (0, s_blk.shape[0]):
        s_blk, s_sub, s_tok = s_blk[lo:hi], s_sub[lo:hi], s_tok[lo:hi]
        d_blk, d_sub, d_tok = d_blk[lo:hi], d_sub[lo:hi], d_tok[lo:hi]
    i, n = batch.spread
    # per job (rows) and chunk (columns): where the chunk starts on each side
    s_off = (batch.src_base[:, None] + s_blk[None, :] * batch.src_page[:, None]
             + s_sub[None, :] * batch.src_kernel[:, None] + s_tok[None, :] * batch.src_token[:, None])
    d_off = (batch.dst_base[:, None] + d_blk[None, :] * batch.dst_page[:, None]
             + d_sub[None, :] * batch.dst_kernel[:, None] + d_tok[None, :] * batch.dst_token[:, None])
    rem = int(tokens[0]) % g
    if not rem or i != n - 1 or not s_off.shape[1]:
        return [_rows(batch, batch.runs, s_off, d_off, len(template.kinds))]
    # the request ends inside its last chunk: that chunk moves only its ``rem`` tokens
    tail = batch.tail(rem, template.tail_runs)
    main = _rows(batch, batch.runs, s_off[:, :-1], d_off[:, :-1], len(template.kinds))
    last = _rows(batch, tail, s_off[:, -1:], d_off[:, -1:], len(template.kinds))
    return [_interleave(main, batch.runs.job, s_off.shape[1] - 1, last, tail.job)]


def _chunk_range(template: CompiledTemplate, batch: Batch, chunk_arrays: tuple[Int64Array, ...]) -> tuple[int, int]:
    """The chunks ``[lo, hi)`` (indices from token 0) a token batch moves: none inside D's
    cached prefix or before a sliding window, and only its share when spread over ranks."""
    tokens = chunk_arrays[0]
    count = int(chunk_arrays[1].shape[0])
    first = int(tokens[1])  # chunks inside D's cached prefix stay where they are
    if batch.window is not None:
        first = max(first, int(max(0, int(tokens[0]) - batch.window) // template.chunk_tokens))
    i, n = batch.spread
    if n > 1:
        left = max(0, count - first)
        return first + left * i // n, first + left * (i + 1) // n
    return min(first, count), count


def _token_tags(template: CompiledTemplate, batch: Batch,
                chunk_arrays: tuple[Int64Array, ...]) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Per row of :func:`_token_rows` (same order): its job, the end of its chunk, its D block."""
    tokens, d_blk = int(chunk_arrays[0][0]), chunk_arrays[4]
    g = template.chunk_tokens
    lo, hi = _chunk_range(template, batch, chunk_arrays)
    ends = np.minimum(np.arange(lo + 1, hi + 1, dtype=np.int64) * g, tokens)
    blocks = d_blk[lo:hi]
    width = hi - lo
    runs = batch.runs
    i, n = batch.spread
    if not tokens % g or i != n - 1 or not width:
        chunk = np.tile(np.arange(width, dtype=np.int64), len(runs.job))
        return np.repeat(runs.job, width), ends[chunk], blocks[chunk]
    tail = batch.tail(tokens % g, template.tail_runs)
    main_at, last_at = _interleave_positions(runs.job, width - 1, tail.job)
    job = _place(main_at, np.repeat(runs.job, width - 1), last_at, tail.job)
    chunk = _place(main_at, np.tile(np.arange(width - 1, dtype=np.int64), len(runs.job)), last_at,
                   np.full(len(tail.job), width - 1, dtype=np.int64))
    return job, ends[chunk], blocks[chunk]


def _place(main_at: Int64Array, m: Int64Array, last_at: Int64Array, t: Int64Array) -> Int64Array:
    col = np.empty(m.shape[0] + t.shape[0], dtype=np.int64)
    col[main_at] = m
    col[last_at] = t
    return col


def _interleave_positions(main_job: Int64Array, width: int, last_job: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Where each main row and each tail row go when every job's tail rows follow its own
    full-chunk rows (main rows: run-major, ``width`` chunks each)."""
    jobs = int(max(main_job.max(initial=-1), last_job.max(initial=-1))) + 1
    main_runs = np.bincount(main_job, minlength=jobs)
    last_runs = np.bincount(last_job, minlength=jobs)
    per_job = main_runs * width + last_runs
    start = np.concatenate(([0], np.cumsum(per_job)[:-1]))
    first_main = np.concatenate(([0], np.cumsum(main_runs)[:-1]))
    first_last = np.concatenate(([0], np.cumsum(last_runs)[:-1]))
    within = np.arange(main_job.shape[0]) - first_main[main_job]
    main_at = ((start[main_job] + within * width)[:, None] + np.arange(width)[None, :]).ravel()
    last_at = start[last_job] + main_runs[last_job] * width + (np.arange(last_job.shape[0]) - first_last[last_job])
    return main_at.astype(np.int64), last_at.astype(np.int64)


def _interleave(main: KindedRows, main_job: Int64Array, width: int,
                last: KindedRows, last_job: Int64Array) -> KindedRows:
    """Put each job's tail rows right after its own full-chunk rows, so they coalesce."""
    main_at, last_at = _interleave_positions(main_job, width, last_job)

    def place(m: Int64Array, t: Int64Array) -> Int64Array:
        return _place(main_at, m, last_at, t)

    (md, m_bytes), (ld, l_bytes) = main, last
    merged = Descriptors(*(place(getattr(md, f), getattr(ld, f)) for f in _RANGE_COLUMNS),
                         src_rank=place(md.src_rank, ld.src_rank))
    return merged, m_bytes + l_bytes


_RANGE_COLUMNS = ("src_region", "src_offset", "dst_region", "dst_offset", "length")


def _rows(batch: Batch, runs: RunTable, s_off: Int64Array, d_off: Int64Array, kinds: int) -> KindedRows:
    """The batch's rows, template-major (consecutive chunks of one run are adjacent, so they
    merge), and their bytes per layer kind."""
    if s_off.ndim == 1:
        s_off, d_off = s_off[:, None], d_off[:, None]
    width = s_off.shape[1]
    src = (runs.src[:, None] + s_off[runs.job]).ravel()
    dst = (runs.dst[:, None] + d_off[runs.job]).ravel()
    rows = Descriptors(np.repeat(batch.src_region[runs.job], width), src,
                       np.repeat(batch.dst_region[runs.job], width), dst, np.repeat(runs.length, width),
                       src_rank=np.full(src.shape[0], batch.src_rank, dtype=np.int64))
    per_kind = np.bincount(batch.kind[runs.job], weights=runs.length, minlength=kinds).astype(np.int64) * width
    return rows, per_kind


def _windowed(template: CompiledTemplate, side: int) -> set[str]:
    """Groups (of P when ``side`` is 0, of D when 1) whose layers have a sliding window."""
    return {(j.src_group, j.dst_group)[side] for j in template.jobs if j.window is not None}


def _tables(blocks: BlockTable, layout: RankLayout, side: str, windowed: set[str]) -> dict[str, Int64Array]:
    """Every given ID is checked, used or not: a bad ID is a bug upstream worth surfacing.

    ``-1`` (a null block) is accepted only in sliding-window groups, for blocks that fell
    out of the window.
    """
    groups = {g.name for g in layout.layout.groups}
    unknown = sorted(set(blocks) - groups)
    if unknown:
        raise BlockIdError(f"{side}: unknown KV group(s) {unknown}; the layout has {sorted(groups)}")
    out: dict[str, Int64Array] = {}
    for name, ids in blocks.items():
        try:
            arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BlockIdError(f"{side} group {name!r}: block IDs must be integers ({exc})") from None
        _check_ids(arr[arr != -1] if name in windowed else arr, layout, name, side)
        out[name] = arr
    return out


def _need(tab: dict[str, Int64Array], group: str, side: str) -> Int64Array:
    if group not in tab:
        raise BlockIdError(f"{side}: no block IDs given for KV group {group!r}")
    return tab[group]


def _check_ids(ids: Int64Array, layout: RankLayout, group: str, side: str) -> None:
    bad = ids[(ids < 0) | (ids >= layout.num_blocks)]
    if bad.size:
        raise BlockIdError(
            f"{side} group {group!r}: block ID {int(bad[0])} is out of range [0, {layout.num_blocks})")
    if np.unique(ids).size != ids.size:
        vals, counts = np.unique(ids, return_counts=True)
        raise BlockIdError(f"{side} group {group!r}: block ID {int(vals[counts > 1][0])} appears twice")


def _token_chunks(
    template: CompiledTemplate,
    src_tab: dict[str, Int64Array],
    dst_tab: dict[str, Int64Array],
    key: tuple[str, str],
    num_tokens: int | None,
    used_dst: dict[str, set[int]],
    cached: int = 0,
    prefixes: dict[str, CachedPrefix] | None = None,
) -> tuple[Int64Array, ...]:
    """Per chunk of the request: where it sits on P and on D.

    The first array is ``[tokens, first chunk D lacks]``; the others have one entry per
    chunk from token 0. ``cached``: leading tokens D holds in ``key[1]`` (recorded in
    ``prefixes``).
    """
    src0, dst = template.src[0], template.dst
    s_ids, d_ids = _need(src_tab, key[0], "P"), _need(dst_tab, key[1], "D")
    bs_s, bs_d = src0.logical_block_tokens, dst.logical_block_tokens
    cap_s, cap_d = s_ids.size * bs_s, d_ids.size * bs_d
    if num_tokens is None:
        if bs_s == bs_d and d_ids.size < s_ids.size and not cached:
            s_ids = s_ids[s_ids.size - d_ids.size:]
            cap_s = cap_d
        if abs(cap_s - cap_d) >= bs_s + bs_d:
            raise BlockIdError(
                f"groups P {key[0]!r} / D {key[1]!r}: P lists {s_ids.size} blocks ({cap_s} tokens) but D lists "
                f"{d_ids.size} blocks ({cap_d} tokens); pass num_tokens or matching block lists")
        tokens = min(cap_s, cap_d)
    else:
        if num_tokens < 0:
            raise BlockIdError(f"num_tokens must be >= 0, got {num_tokens}")
        for side, cap, n, bs in (("P", cap_s, s_ids.size, bs_s), ("D", cap_d, d_ids.size, bs_d)):
            if cap < num_tokens:
                raise BlockIdError(f"{side} group {key[0] if side == 'P' else key[1]!r}: {n} blocks of {bs} "
                                   f"tokens hold {cap} tokens, fewer than num_tokens={num_tokens}")
        tokens = num_tokens
    if cached > tokens:
        raise BlockIdError(f"D group {key[1]!r}: dst_cached_tokens={cached} exceeds the request's {tokens} tokens "
                           f"(D lists {d_ids.size} blocks of {bs_d} tokens)")
    g = template.chunk_tokens
    kept = cached // bs_d * bs_d  # whole D blocks: a hit ending inside a block moves that block
    skip = kept // g
    t = np.arange(-(-tokens // g), dtype=np.int64) * g
    s_lb, d_lb = t // bs_s, t // bs_d
    used_s = np.unique(s_lb[skip:])
    used_d = np.unique(d_lb[skip:])
    window = _group_window(template, key)
    s_blk, d_blk = s_ids[s_lb], d_ids[d_lb]
    if window is None:
        _check_ids(s_ids[used_s], src0, key[0], "P")
        _check_ids(d_ids[used_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[used_d].tolist())
    else:
        first = max(max(0, tokens - window) // g * g, kept)
        keep_s, keep_d = np.unique(s_lb[t >= first]), np.unique(d_lb[t >= first])
        _check_ids(s_ids[keep_s], src0, key[0], "P")
        _check_ids(d_ids[keep_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[keep_d].tolist())
    if cached and prefixes is not None:
        held = d_ids[:kept // bs_d]
        prefixes[key[1]] = CachedPrefix(key[1], cached, kept, bs_d, tuple(held[held >= 0].tolist()))
    s_in, d_in = t % bs_s, t % bs_d
    kb_s, kb_d = src0.kernel_block_tokens, dst.kernel_block_tokens
    return (np.array([tokens, skip], dtype=np.int64),
            s_blk, s_in // kb_s, s_in % kb_s, d_blk, d_in // kb_d, d_in % kb_d)


def _group_window(template: CompiledTemplate, key: tuple[str, str]) -> int | None:
    windows = [j.window for j in template.jobs if (j.src_group, j.dst_group) == key]
    known = [w for w in windows if w is not None]
    return max(known) if known and len(known) == len(windows) else None


def _state_blocks(
    src_tab: dict[str, Int64Array],
    dst_tab: dict[str, Int64Array],
    key: tuple[str, str],
    used_dst: dict[str, set[int]],
    src0: RankLayout,
    dst: RankLayout,
) -> tuple[int, int]:
    s_ids, d_ids = _need(src_tab, key[0], "P"), _need(dst_tab, key[1], "D")
    if not s_ids.size or not d_ids.size:
        side, group = ("P", key[0]) if not s_ids.size else ("D", key[1])
        raise BlockIdError(f"{side} state group {group!r}: no block given for the running state")
    if abs(s_ids.size - d_ids.size) > 1:
        raise BlockIdError(
            f"state groups P {key[0]!r} ({s_ids.size} blocks) / D {key[1]!r} ({d_ids.size} blocks): "
            "block counts differ by more than one slot")
    sb, db = s_ids[-1:], d_ids[-1:]
    _check_ids(sb, src0, key[0], "P")
    _check_ids(db, dst, key[1], "D")
    used_dst.setdefault(key[1], set()).add(int(db[0]))
    return int(sb[0]), int(db[0])


def _check_aliasing(template: CompiledTemplate, used_dst: dict[str, set[int]]) -> None:
    """Groups sharing region bytes must not be given the same block in one request."""
    for a, b in template.aliasing_groups:
        clash = used_dst.get(a, set()) & used_dst.get(b, set())
        if clash:
            raise BlockIdError(
                f"D groups {a!r} and {b!r} share memory but both use block {min(clash)}: "
                "the transfer would overwrite one with the other")


def _assemble(
    template: CompiledTemplate,
    rows: dict[int, list[KindedRows]],
    used_dst: dict[str, set[int]],
    prefixes: Mapping[str, CachedPrefix],
    skipped: int,
) -> TransferPlan:
    """Every rank's rows in rank order, coalesced (rows of different ranks never merge).

    Each batch's rows are merged before they are joined, then the joined table once more
    at the seams: the same rows as merging the joined table, without first copying every
    uncoalesced row into it.
    """
    ranks = sorted(rows)
    parts = [part for rank in ranks for part in rows[rank]]
    by_kind = np.zeros(len(template.kinds), dtype=np.int64)
    for _, part_bytes in parts:
        by_kind += part_bytes
    uncoalesced = sum(len(d) for d, _ in parts)
    if template.coalesce:
        descriptors = Descriptors.concat([d.coalesce() for d, _ in parts]).coalesce()
    else:
        descriptors = Descriptors.concat([d for d, _ in parts])
    per_rank = descriptors.by_source()
    by_kind_map = {k: int(v) for k, v in zip(template.kinds, by_kind.tolist(), strict=True) if v}
    pad = dict(template.state_padding)
    padding = sum(pad.get(g, 0) * len(blocks) for g, blocks in used_dst.items())
    stats = PlanStatistics(
        bytes=descriptors.total_bytes,
        bytes_by_kind=by_kind_map,
        padding_bytes_skipped=padding,
        descriptor_count=len(descriptors),
        descriptor_count_uncoalesced=uncoalesced,
        bytes_by_source={r: per_rank[r].total_bytes if r in per_rank else 0 for r in ranks},
        descriptors_by_source={r: len(per_rank[r]) if r in per_rank else 0 for r in ranks},
        skipped_cached_bytes=skipped,
    )
    return TransferPlan(
        src_tp=template.src_tp, dst_tp=template.dst.tp, dst_rank=template.dst.rank,
        descriptors=descriptors,
        src_region_names=template.src_region_names,
        dst_region_names=template.dst.region_names,
        src_pp=template.src[0].pp, dst_pp=template.dst.pp, dst_stage=template.dst.stage,
        notify_ranks=template.notify_ranks,
        dst_blocks={g: tuple(sorted(b)) for g, b in sorted(used_dst.items())},
        statistics=stats,
        cached_prefix=dict(sorted(prefixes.items())),
    )


def contiguous_block_tables(layout: RankLayout, num_tokens: int) -> dict[str, list[int]]:
    """Block IDs of one request of ``num_tokens`` allocated contiguously from block 0.

    Attention-like groups get ``ceil(num_tokens / logical_block_tokens)`` blocks, state
    groups one running-state block; groups take consecutive ranges in layout order, so
    groups that share pooled memory never collide (what ``--tokens N`` means in the CLI).
    """
    out: dict[str, list[int]] = {}
    nxt = 0
    per_tokens = -(-num_tokens // layout.logical_block_tokens)
    for group in layout.layout.groups:
        kind = layout.layout.layer_spec(group.layers[0]).kind_name
        n = per_tokens if is_token_spec(kind) else 1
        out[group.name] = list(range(nxt, nxt + n))
        nxt += n
    if nxt > layout.num_blocks:
        raise BlockIdError(
            f"a request of {num_tokens} tokens needs {nxt} blocks but rank {layout.rank} holds {layout.num_blocks}")
    return out

"""Bind a compiled template to one request's block IDs, producing a :class:`TransferPlan`.

Attention-like groups are bridged by token position: token ``t`` lives in P's logical
block ``t // bs_P``, kernel sub-block ``(t % bs_P) // kbs_P``, slot ``t % kbs_P`` — and
likewise on D with D's own sizes — so P and D may use different logical *and* kernel
block sizes. State groups carry one running-state block each. Everything is numpy over
chunks; no Python loop runs per descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.errors import BlockIdError
from hybridxfer.layout import RankLayout
from hybridxfer.plan._plan import PlanStatistics, SourceReads, TransferPlan
from hybridxfer.plan._batch import Batch, RunTable
from hybridxfer.plan._runs import merge_starts
from hybridxfer.plan._template import PlanTemplate

__all__ = ["bind"]

Int64Array = npt.NDArray[np.int64]
BlockTable = Mapping[str, Sequence[int] | Int64Array]


def bind(
    template: PlanTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    *,
    num_tokens: int | None = None,
) -> TransferPlan:
    """Descriptors for one request.

    ``src_blocks`` / ``dst_blocks`` map each KV group name (of P's and D's layout) to the
    request's logical block IDs in that group. Attention groups: blocks in token order;
    IDs of blocks outside a sliding window may be ``-1``. State groups: the last ID is the
    running-state block. ``num_tokens``: tokens to move (default: what both sides cover;
    when both use the same logical block size and D lists fewer blocks, D's blocks are
    taken to hold P's *last* blocks — a partial prefix-cache hit).

    Raises :class:`~hybridxfer.errors.BlockIdError` before any byte moves when IDs are out
    of range, duplicated, missing, or the two sides' token counts cannot be bridged.
    """
    src0, dst = template.src[0], template.dst
    src_tab = _tables(src_blocks, src0, "P", _windowed(template, 0))
    dst_tab = _tables(dst_blocks, dst, "D", _windowed(template, 1))
    chunks: dict[tuple[str, str], tuple[Int64Array, ...]] = {}
    states: dict[tuple[str, str], tuple[int, int]] = {}
    used_dst: dict[str, set[int]] = {}
    cols: dict[int, list[tuple[Int64Array, ...]]] = {}
    for batch in template.batches:
        key = (batch.src_group, batch.dst_group)
        if batch.has_tokens:
            if key not in chunks:
                chunks[key] = _token_chunks(template, src_tab, dst_tab, key, num_tokens, used_dst)
            out = _token_rows(template, batch, chunks[key])
        else:
            if key not in states:
                states[key] = _state_blocks(src_tab, dst_tab, key, used_dst, src0, dst)
            sb, db = states[key]
            out = [_rows(batch, batch.runs, batch.src_base + sb * batch.src_page,
                         batch.dst_base + db * batch.dst_page)]
        cols.setdefault(batch.src_rank, []).extend(out)
    _check_aliasing(template, used_dst)
    return _assemble(template, cols, used_dst)


def _token_rows(template: PlanTemplate, batch: Batch, chunk_arrays: tuple[Int64Array, ...]) -> list[tuple[Int64Array, ...]]:
    """Rows of a token batch: every job's runs at every chunk of the request it moves."""
    tokens, s_blk, s_sub, s_tok, d_blk, d_sub, d_tok = chunk_arrays
    g = template.chunk_tokens
    if batch.window is not None:
        first = int(max(0, int(tokens[0]) - batch.window) // g)
        s_blk, s_sub, s_tok = s_blk[first:], s_sub[first:], s_tok[first:]
        d_blk, d_sub, d_tok = d_blk[first:], d_sub[first:], d_tok[first:]
    i, n = batch.spread
    if n > 1:
        lo, hi = s_blk.shape[0] * i // n, s_blk.shape[0] * (i + 1) // n
        s_blk, s_sub, s_tok = s_blk[lo:hi], s_sub[lo:hi], s_tok[lo:hi]
        d_blk, d_sub, d_tok = d_blk[lo:hi], d_sub[lo:hi], d_tok[lo:hi]
    # per job (rows) and chunk (columns): where the chunk starts on each side
    s_off = (batch.src_base[:, None] + s_blk[None, :] * batch.src_page[:, None]
             + s_sub[None, :] * batch.src_kernel[:, None] + s_tok[None, :] * batch.src_token[:, None])
    d_off = (batch.dst_base[:, None] + d_blk[None, :] * batch.dst_page[:, None]
             + d_sub[None, :] * batch.dst_kernel[:, None] + d_tok[None, :] * batch.dst_token[:, None])
    rem = int(tokens[0]) % g
    if not rem or i != n - 1 or not s_off.shape[1]:
        return [_rows(batch, batch.runs, s_off, d_off)]
    # the request ends inside its last chunk: that chunk moves only its ``rem`` tokens
    tail = batch.tail(rem, template.tail_runs)
    main = _rows(batch, batch.runs, s_off[:, :-1], d_off[:, :-1])
    last = _rows(batch, tail, s_off[:, -1:], d_off[:, -1:])
    return [_interleave(main, batch.runs.job, s_off.shape[1] - 1, last, tail.job)]


def _interleave(main: tuple[Int64Array, ...], main_job: Int64Array, width: int,
                last: tuple[Int64Array, ...], last_job: Int64Array) -> tuple[Int64Array, ...]:
    """Put each job's tail rows right after its own full-chunk rows, so they coalesce."""
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
    out = []
    for m, t in zip(main, last, strict=True):
        col = np.empty(m.shape[0] + t.shape[0], dtype=np.int64)
        col[main_at] = m
        col[last_at] = t
        out.append(col)
    return tuple(out)


def _rows(batch: Batch, runs: RunTable, s_off: Int64Array, d_off: Int64Array) -> tuple[Int64Array, ...]:
    """(src region, src offset, dst region, dst offset, length, kind) columns, template-major:
    consecutive chunks of one run are adjacent, so they merge."""
    if s_off.ndim == 1:
        s_off, d_off = s_off[:, None], d_off[:, None]
    width = s_off.shape[1]
    src = (runs.src[:, None] + s_off[runs.job]).ravel()
    dst = (runs.dst[:, None] + d_off[runs.job]).ravel()
    return (np.repeat(batch.src_region[runs.job], width), src, np.repeat(batch.dst_region[runs.job], width),
            dst, np.repeat(runs.length, width), np.repeat(batch.kind[runs.job], width))


def _windowed(template: PlanTemplate, side: int) -> set[str]:
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
    template: PlanTemplate,
    src_tab: dict[str, Int64Array],
    dst_tab: dict[str, Int64Array],
    key: tuple[str, str],
    num_tokens: int | None,
    used_dst: dict[str, set[int]],
) -> tuple[Int64Array, ...]:
    src0, dst = template.src[0], template.dst
    s_ids, d_ids = _need(src_tab, key[0], "P"), _need(dst_tab, key[1], "D")
    bs_s, bs_d = src0.logical_block_tokens, dst.logical_block_tokens
    cap_s, cap_d = s_ids.size * bs_s, d_ids.size * bs_d
    if num_tokens is None:
        if bs_s == bs_d and d_ids.size < s_ids.size:
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
    g = template.chunk_tokens
    t = np.arange(-(-tokens // g), dtype=np.int64) * g
    s_lb, d_lb = t // bs_s, t // bs_d
    used_s = np.unique(s_lb)
    used_d = np.unique(d_lb)
    window = _group_window(template, key)
    s_blk, d_blk = s_ids[s_lb], d_ids[d_lb]
    if window is None:
        _check_ids(s_ids[used_s], src0, key[0], "P")
        _check_ids(d_ids[used_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[used_d].tolist())
    else:
        first = max(0, tokens - window) // g * g
        keep_s, keep_d = np.unique(s_lb[t >= first]), np.unique(d_lb[t >= first])
        _check_ids(s_ids[keep_s], src0, key[0], "P")
        _check_ids(d_ids[keep_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[keep_d].tolist())
    s_in, d_in = t % bs_s, t % bs_d
    kb_s, kb_d = src0.kernel_block_tokens, dst.kernel_block_tokens
    return (np.array([tokens], dtype=np.int64),
            s_blk, s_in // kb_s, s_in % kb_s, d_blk, d_in // kb_d, d_in % kb_d)


def _group_window(template: PlanTemplate, key: tuple[str, str]) -> int | None:
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


def _check_aliasing(template: PlanTemplate, used_dst: dict[str, set[int]]) -> None:
    """Groups sharing region bytes must not be given the same block in one request."""
    for a, b in template.aliasing_groups:
        clash = used_dst.get(a, set()) & used_dst.get(b, set())
        if clash:
            raise BlockIdError(
                f"D groups {a!r} and {b!r} share memory but both use block {min(clash)}: "
                "the transfer would overwrite one with the other")


def _assemble(
    template: PlanTemplate,
    cols: dict[int, list[tuple[Int64Array, ...]]],
    used_dst: dict[str, set[int]],
) -> TransferPlan:
    reads: list[SourceReads] = []
    by_kind = np.zeros(len(template.kinds), dtype=np.int64)
    total_raw = 0
    for rank in sorted(cols):
        sr, so, dr, do, ln, kind = (np.concatenate([c[i] for c in cols[rank]]) for i in range(6))
        by_kind += np.bincount(kind, weights=ln, minlength=len(template.kinds)).astype(np.int64)
        total_raw += ln.shape[0]
        if template.coalesce and ln.shape[0] > 1:
            starts = merge_starts(so, do, ln, sr, dr)
            ln = np.add.reduceat(ln, starts)
            sr, so, dr, do = sr[starts], so[starts], dr[starts], do[starts]
        reads.append(SourceReads(rank, sr, so, dr, do, ln))
    by_kind_map = {k: int(v) for k, v in zip(template.kinds, by_kind.tolist(), strict=True) if v}
    pad = dict(template.state_padding)
    padding = sum(pad.get(g, 0) * len(blocks) for g, blocks in used_dst.items())
    stats = PlanStatistics(
        bytes=sum(r.total_bytes for r in reads),
        bytes_by_kind=by_kind_map,
        padding_bytes_skipped=padding,
        descriptor_count=sum(len(r) for r in reads),
        descriptor_count_uncoalesced=total_raw,
        bytes_by_source={r.src_rank: r.total_bytes for r in reads},
        descriptors_by_source={r.src_rank: len(r) for r in reads},
    )
    return TransferPlan(
        src_tp=template.src_tp, dst_tp=template.dst.tp, dst_rank=template.dst.rank,
        reads=tuple(reads),
        src_region_names=template.src[0].region_names,
        dst_region_names=template.dst.region_names,
        notify_ranks=template.notify_ranks,
        dst_blocks={g: tuple(sorted(b)) for g, b in sorted(used_dst.items())},
        statistics=stats,
    )


def contiguous_block_tables(layout: RankLayout, num_tokens: int) -> dict[str, list[int]]:
    """Block IDs of one request of ``num_tokens`` allocated contiguously from block 0.

    Attention-like groups get ``ceil(num_tokens / logical_block_tokens)`` blocks, state
    groups one running-state block; groups take consecutive ranges in layout order, so
    groups that share pooled memory never collide (what ``--tokens N`` means in the CLI).
    """
    from hybridxfer.layout._validate import is_token_spec

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

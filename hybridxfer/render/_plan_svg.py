"""Draw one D rank's plan: per view (attention K/V, conv x/B/C + SSM), one D page, the P
pages it reads from, and a band per byte range read.

Why one page per view: a plan repeats the same per-page pattern over every block and
layer; one page of each view of one region shows everything that differs between plans
(head slices, split conv descriptors, padding skipped, fan-in from several P ranks).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan
from hybridxfer.render._svg import Canvas, PageScale, Part, colour, draw_parts, page_parts

__all__ = ["plan_svg"]

WIDTH, MARGIN, BAR_H, GAP, MAX_BANDS = 1160.0, 24.0, 30.0, 78.0, 2000


@attrs.frozen
class _Range:
    """One drawn byte range: P (rank, region, block, offset in page) -> D offset in page."""

    src_rank: int
    src_region: str
    src_block: int
    src_in_page: int
    dst_in_page: int
    length: int


def _panel_groups(plan: TransferPlan, dst: RankLayout, region: str) -> list[tuple[str, str]]:
    """(group, layer) per kind with a view over ``region`` that this plan writes, in layout order."""
    seen: dict[str, tuple[str, str]] = {}
    for p in dst.placements:
        if p.region == region and p.group in plan.dst_blocks and plan.dst_blocks[p.group] and p.kind not in seen:
            seen[p.kind] = (p.group, p.layer)
    return list(seen.values())


def _ranges(plan: TransferPlan, src: Sequence[RankLayout], dst: RankLayout, region: str, block: int) -> list[_Range]:
    """Descriptors clipped to D's page ``block`` of ``region``, split at P page boundaries."""
    d_page = dst.region_page_bytes[dst.region_index(region)]
    lo, hi = block * d_page, (block + 1) * d_page
    d_index = plan.dst_region_names.index(region)
    out: list[_Range] = []
    for reads in plan.reads:
        for sr, so, dr, do, n in reads.rows():
            if dr != d_index or do >= hi or do + n <= lo:
                continue
            start, stop = max(do, lo), min(do + n, hi)
            s_name = plan.src_region_names[sr]
            s_page = src[reads.source_rank].region_page_bytes[src[reads.source_rank].region_index(s_name)]
            s = so + (start - do)
            while start < stop:
                take = min(stop - start, s_page - s % s_page)
                out.append(_Range(reads.source_rank, s_name, s // s_page, s % s_page, start - lo, take))
                start, s = start + take, s + take
    return out


def _dim_outside(c: Canvas, scale: PageScale, page: int, spans: list[tuple[int, int]], y: float) -> None:
    """Veil the bytes of a page that the plan does not touch."""
    pos = 0
    for a, b in sorted(spans) + [(page, page)]:
        if a > pos:
            c.rect(scale(pos), y, scale(a) - scale(pos), BAR_H, "#ffffff", opacity=0.62)
        pos = max(pos, b)


def _part_at(parts: Sequence[Part], offset: int) -> Part:
    return next((p for p in parts if p.start <= offset < p.end), parts[-1])


def _panel(c: Canvas, y: float, plan: TransferPlan, src: Sequence[RankLayout], dst: RankLayout,
           region: str, group: str, layer: str) -> float:
    block = plan.dst_blocks[group][-1] if dst.placements and not _is_token(dst, group) else plan.dst_blocks[group][0]
    ranges = _ranges(plan, src, dst, region, block)
    kind = next(p.kind for p in dst.placements if p.group == group)
    bars = sorted({(r.src_rank, r.src_region, r.src_block) for r in ranges})[:4]
    c.text(MARGIN, y + 14, f"{kind} view: {layer} (group {group})", size=14, weight="bold")
    where = ", ".join(f"P rank {rk} block {b}" for rk, _, b in bars) or "nothing"
    c.text(MARGIN, y + 32, f"D rank {plan.dst_rank} block {block} of {region}  \u2190  {where}", size=12, fill="#555")
    y += 44
    width = (WIDTH - 2 * MARGIN - 18 * (len(bars) - 1)) / max(1, len(bars))
    p_scales: dict[tuple[int, str, int], tuple[PageScale, list[Part]]] = {}
    for i, key in enumerate(bars):
        rank_layout = src[key[0]]
        parts = page_parts(rank_layout, key[1], layer)
        x0 = MARGIN + i * (width + 18)
        scale = PageScale(parts, x0, width)
        p_scales[key] = (scale, parts)
        page = rank_layout.region_page_bytes[rank_layout.region_index(key[1])]
        c.text(x0, y + 12, f"P rank {key[0]}/{rank_layout.tp}, block {key[2]}", size=12, weight="bold")
        c.text(x0 + width, y + 12, f"page {page:,} B", size=11, anchor="end", fill="#555")
        draw_parts(c, parts, scale, y + 18, BAR_H)
        _dim_outside(c, scale, page, [(r.src_in_page, r.src_in_page + r.length) for r in ranges
                                      if (r.src_rank, r.src_region, r.src_block) == key], y + 18)
    p_bottom = y + 18 + BAR_H
    d_top = p_bottom + GAP
    d_parts = page_parts(dst, region, layer)
    d_page = dst.region_page_bytes[dst.region_index(region)]
    d_scale = PageScale(d_parts, MARGIN, WIDTH - 2 * MARGIN)
    drawn = [r for r in ranges if (r.src_rank, r.src_region, r.src_block) in p_scales][:MAX_BANDS]
    for r in drawn:
        scale, _ = p_scales[(r.src_rank, r.src_region, r.src_block)]
        fill = colour(_part_at(d_parts, r.dst_in_page).key)
        c.polygon([(scale(r.src_in_page), p_bottom), (scale(r.src_in_page + r.length), p_bottom),
                   (d_scale(r.dst_in_page + r.length), d_top), (d_scale(r.dst_in_page), d_top)], fill, 0.32)
    moved = sum(r.length for r in ranges)
    note = f"{len(ranges)} range{'s' if len(ranges) != 1 else ''}, {moved:,} B into this page"
    if len(drawn) < len(ranges):
        note += f" (first {len(drawn)} drawn)"
    c.text(WIDTH / 2, p_bottom + GAP / 2 + 4, note, size=11, anchor="middle", fill="#333")
    draw_parts(c, d_parts, d_scale, d_top, BAR_H)
    _dim_outside(c, d_scale, d_page, [(r.dst_in_page, r.dst_in_page + r.length) for r in ranges], d_top)
    c.text(MARGIN, d_top + BAR_H + 16, f"D rank {plan.dst_rank}/{dst.tp}, block {block}", size=12, weight="bold")
    c.text(WIDTH - MARGIN, d_top + BAR_H + 16, f"page {d_page:,} B", size=11, anchor="end", fill="#555")
    return d_top + BAR_H + 40


def _is_token(r: RankLayout, group: str) -> bool:
    return any(p.group == group and p.piece.has_tokens for p in r.placements)


def _legend(c: Canvas, y: float, keys: Sequence[tuple[str, str]]) -> None:
    x = MARGIN
    for key, label in keys:
        fill = "url(#pad)" if key == "padding" else colour(key)
        c.rect(x, y, 16, 12, fill, stroke="#555", extra='stroke-width="0.6"')
        c.text(x + 22, y + 10, label, size=11)
        x += 34 + len(label) * 6.4
    c.text(WIDTH - MARGIN, y + 10, "widths not to scale (small parts widened); veiled bytes are not moved",
           size=10, anchor="end", fill="#666")


def plan_svg(plan: TransferPlan, src: Sequence[RankLayout], dst: RankLayout) -> str:
    """SVG of ``plan`` (compiled from ``src`` P rank layouts into ``dst``)."""
    s = plan.statistics
    written = [plan.dst_region_names[int(r.dst_region[0])] for r in plan.reads if len(r)]
    region = written[0] if written else dst.region_names[0]
    panels = _panel_groups(plan, dst, region)
    height = 96 + len(panels) * (44 + 18 + BAR_H * 2 + GAP + 40) + 40
    c = Canvas(WIDTH, height)
    c.text(MARGIN, 30, f"{dst.layout.model}: P TP {plan.src_tp} \u2192 D TP {plan.dst_tp}, plan of D rank {plan.dst_rank}",
           size=18, weight="bold")
    kinds = ", ".join(f"{k} {v:,} B" for k, v in sorted(s.bytes_by_kind.items()))
    c.text(MARGIN, 52, f"{s.bytes:,} B ({kinds}) in {s.descriptor_count:,} descriptors "
                       f"({s.descriptor_count_uncoalesced:,} uncoalesced); padding skipped {s.padding_bytes_skipped:,} B",
           size=12, fill="#444")
    c.text(MARGIN, 70, f"one page of region {region} per view, as P holds it (top) and D receives it (bottom); "
                       "every layer and block repeats this pattern", size=12, fill="#444")
    y = 92.0
    for group, layer in panels:
        y = _panel(c, y, plan, src, dst, region, group, layer)
    _legend(c, y - 8, [("head:0", "K|V head"), ("head:1", "K|V next head"), ("x", "conv x"), ("B", "conv B"),
                       ("C", "conv C"), ("ssm", "SSM"), ("padding", "padding")])
    return str(c)

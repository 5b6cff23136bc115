"""Render results: a Markdown table per benchmark and a pure-Python SVG line chart.

Why hand-written SVG: the plot (throughput vs request size per transport, beside each
raw ceiling) must come out of a bare install; matplotlib is not a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from hybridxfer.bench._results import CaseResult, PlannerResult

__all__ = ["case_table", "planner_table", "svg_chart"]


def _g(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def _vllm(r: CaseResult) -> str:
    if r.vllm_descriptors is None:
        return "—"
    return f"{_g(r.bytes, r.vllm_descriptors.median):.2f} ({r.vllm_descriptor_count})"


def case_table(results: Sequence[CaseResult]) -> str:
    head = ("| transport | layout | P→D | tokens × req | MB | desc (uncoal.) | hybridxfer GB/s med [min–max] "
            "| ceiling | ceiling GB/s med [min–max] | ratio | vLLM-desc GB/s (desc) | ×vLLM | memcpy GB/s | bind+prep ms | plan % | dup B | pad skipped B |")
    lines = [head, "|" + "---|" * 17]
    for r in results:
        lines.append(
            f"| {r.transport} | {r.layout} | {r.src_tp}→{r.dst_tp} | {r.tokens} × {r.requests} | {r.bytes / 1e6:.1f} "
            f"| {r.descriptors} ({r.descriptors_uncoalesced}) "
            f"| {r.gbps:.2f} [{_g(r.bytes, r.hybridxfer.max):.2f}–{_g(r.bytes, r.hybridxfer.min):.2f}] "
            f"| {r.ceiling_name} | {r.ceiling_gbps:.2f} [{_g(r.bytes, r.ceiling.max):.2f}–{_g(r.bytes, r.ceiling.min):.2f}] "
            f"| {r.ratio:.2f} | {_vllm(r)} | {'—' if r.vs_vllm is None else f'{r.vs_vllm:.2f}'} "
            f"| {_g(r.bytes, r.memcpy.median):.2f} "
            f"| {(r.plan_bind.median + r.plan_prepare.median) * 1e3:.2f} | {100 * r.planning_fraction:.1f} "
            f"| {r.duplicate_bytes} | {r.padding_bytes_skipped} |")
    return "\n".join(lines)


def planner_table(results: Sequence[PlannerResult]) -> str:
    lines = ["| layout | P→D | tokens | compile ms med [min–max] | bind ms med [min–max] | loop ms med [min–max] "
             "| ×loop (compile+bind) | ×loop (bind) | desc | desc uncoal. | ratio | same bytes |",
             "|" + "---|" * 12]
    for r in results:
        c, b, lp = r.compile_coalesced, r.bind_coalesced, r.loop
        lines.append(
            f"| {r.layout} | {r.src_tp}→{r.dst_tp} | {r.tokens} | {c.median * 1e3:.2f} [{c.min * 1e3:.2f}–{c.max * 1e3:.2f}] "
            f"| {b.median * 1e3:.2f} [{b.min * 1e3:.2f}–{b.max * 1e3:.2f}] "
            f"| {lp.median * 1e3:.1f} [{lp.min * 1e3:.1f}–{lp.max * 1e3:.1f}] | {r.speedup:.1f} | {r.bind_speedup:.1f} "
            f"| {r.descriptors} | {r.descriptors_uncoalesced} | {r.descriptors / max(1, r.descriptors_uncoalesced):.4f} "
            f"| {'yes' if r.matches else 'NO'} |")
    return "\n".join(lines)


_COLOURS = {"tcp": "#1f77b4", "nixl": "#d62728", "ucxx": "#2ca02c"}


def svg_chart(results: Sequence[CaseResult], title: str = "hybridxfer throughput vs request size") -> str:
    """One line per (transport, layout, pairing): solid = hybridxfer, dashed = raw ceiling.

    x: tokens per request (log2), y: GB/s (median). Single-request cases only.
    """
    series: dict[tuple[str, str, int, int], list[CaseResult]] = {}
    for r in results:
        if r.requests == 1:
            series.setdefault((r.transport, r.layout, r.src_tp, r.dst_tp), []).append(r)
    width, height, left, right, top, bottom = 900, 520, 60, 330, 40, 50
    pts = [r for rs in series.values() for r in rs]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="80"><text x="10" y="40">no data</text></svg>'
    xs = [math.log2(r.tokens) for r in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = max(max(r.gbps, r.ceiling_gbps) for r in pts) * 1.1 or 1.0
    pw, ph = width - left - right, height - top - bottom

    def px(tokens: int) -> float:
        return left + (math.log2(tokens) - x0) / (x1 - x0) * pw

    def py(gbps: float) -> float:
        return top + ph - gbps / y1 * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
           f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">tokens per request (log scale)</text>',
           f'<text x="15" y="{top + ph / 2}" transform="rotate(-90 15 {top + ph / 2})" text-anchor="middle">GB/s</text>']
    for i in range(6):
        v = y1 * i / 5
        out.append(f'<line x1="{left - 4}" y1="{py(v):.1f}" x2="{left + pw}" y2="{py(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for tokens in sorted({r.tokens for r in pts}):
        out.append(f'<text x="{px(tokens):.1f}" y="{top + ph + 15}" text-anchor="middle">{tokens}</text>')
    dashes = ["", "6,3", "2,2", "8,3,2,3", "1,4", "10,2"]
    for n, (key, rs) in enumerate(sorted(series.items())):
        rs = sorted(rs, key=lambda r: r.tokens)
        colour = _COLOURS.get(key[0], "#555")
        marker = ["circle", "rect"][n % 2]
        for kind, values, dash in (("hx", [r.gbps for r in rs], ""), ("raw", [r.ceiling_gbps for r in rs], "5,4")):
            path = " ".join(f"{px(r.tokens):.1f},{py(v):.1f}" for r, v in zip(rs, values, strict=True))
            opacity = "1" if kind == "hx" else "0.45"
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-opacity="{opacity}" '
                       f'stroke-width="2" stroke-dasharray="{dash or dashes[n % len(dashes)]}"/>')
            for r, v in zip(rs, values, strict=True):
                if marker == "circle":
                    out.append(f'<circle cx="{px(r.tokens):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}" '
                               f'fill-opacity="{opacity}"/>')
                else:
                    out.append(f'<rect x="{px(r.tokens) - 3:.1f}" y="{py(v) - 3:.1f}" width="6" height="6" '
                               f'fill="{colour}" fill-opacity="{opacity}"/>')
        label = f"{key[0]} {key[1].split('-')[0]} P{key[2]}→D{key[3]} (faint dashed: raw)"
        ly = top + 14 * n
        out.append(f'<line x1="{left + pw + 10}" y1="{ly}" x2="{left + pw + 35}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="{dashes[n % len(dashes)]}"/>'
                   f'<text x="{left + pw + 40}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)

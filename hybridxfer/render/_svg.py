"""SVG primitives shared by the pictures: a tiny element builder, colours, page parts, scales.

Why a fisheye scale: in a Nemotron page the conv state is under 2 % of the bytes and its
B and C slices well under 1 %; drawn to scale they vanish. :class:`PageScale` gives every
part a minimum width and shares the rest in proportion to bytes, piecewise linearly, so
byte ranges still map monotonically and the pictures say "not to scale".
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

import attrs

from hybridxfer.layout import PlacedPiece, RankLayout, owned_units

__all__ = ["Canvas", "PageScale", "Part", "colour", "page_parts"]

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"

_COLOURS = {
    "K": "#4c78a8", "V": "#9ecae9", "kv": "#4c78a8", "latent": "#4c78a8",
    "x": "#f58518", "B": "#e45756", "C": "#b279a2", "q": "#f58518", "k": "#e45756", "v": "#b279a2",
    "ssm": "#54a24b", "conv": "#f58518", "padding": "#d9d9d9",
}
_HEAD_SHADES = ("#4c78a8", "#72a0cf", "#2f5f8f", "#9ecae9")


def colour(key: str) -> str:
    """Fill colour of a part key (``K``, ``x``, ``ssm``, ``head:3``, ``padding`` ...)."""
    if key.startswith("head:"):
        return _HEAD_SHADES[int(key[5:]) % len(_HEAD_SHADES)]
    return _COLOURS.get(key, "#8c8c8c")


@attrs.frozen
class Part:
    """A labelled byte span of one page: ``[start, start + size)`` from the page base."""

    start: int
    size: int
    label: str
    key: str

    @property
    def end(self) -> int:
        return self.start + self.size


def _piece_parts(r: RankLayout, p: PlacedPiece, offset: int) -> list[Part]:
    """Split a piece along its sharded axis when that axis is outermost (x|B|C, heads)."""
    piece, repeat = p.piece, r.blocks_per_kernel if p.piece.has_tokens else 1
    strides = piece.strides()
    parts: list[Part] = []
    for k in range(repeat):
        base = offset + k * piece.nbytes
        if piece.sharded_axis != piece.axes[0] or not piece.segments:
            parts.append(Part(base, piece.nbytes, piece.name, piece.name))
            continue
        pos = 0
        for seg in piece.segments:
            units = owned_units(seg, r.tp, r.rank)
            width = len(units) * seg.unit_extent * strides[0]
            if piece.name == "kv" and len(units) <= 8:  # one part per KV head
                per = width // len(units)
                parts.extend(Part(base + pos + i * per, per, f"K|V h{u}", f"head:{u}") for i, u in enumerate(units))
            elif seg.name in ("x", "B", "C", "q", "k", "v"):
                parts.append(Part(base + pos, width, f"conv {seg.name}", seg.name))
            else:
                label = f"{piece.name} h{units[0]}-{units[-1]}" if len(units) > 1 else f"{piece.name} h{units[0]}"
                parts.append(Part(base + pos, width, label, piece.name))
            pos += width
    return parts


def page_parts(r: RankLayout, region: str, layer: str) -> list[Part]:
    """Parts of ``layer``'s view over one page of ``region``, padding included, in order."""
    page = r.region_page_bytes[r.region_index(region)]
    parts: list[Part] = []
    for p in r.placements:
        if p.region == region and p.layer == layer:
            parts.extend(_piece_parts(r, p, p.base % p.page_stride if p.page_stride else p.base))
    parts.sort(key=lambda q: q.start)
    out: list[Part] = []
    pos = 0
    for q in parts:
        if q.start > pos:
            out.append(Part(pos, q.start - pos, "padding", "padding"))
        out.append(q)
        pos = max(pos, q.end)
    if pos < page:
        out.append(Part(pos, page - pos, "padding", "padding"))
    return out


class PageScale:
    """Byte offset in a page -> x, piecewise linear over parts with a minimum width each."""

    def __init__(self, parts: Sequence[Part], x0: float, width: float, min_width: float = 40.0) -> None:
        total = sum(p.size for p in parts) or 1
        floor = min(min_width, width / max(1, len(parts)))
        widths = [max(floor, width * p.size / total) for p in parts]
        squeeze = sum(widths) - width
        if squeeze > 0:  # take the excess from parts wider than the floor, in proportion
            spare = sum(w - floor for w in widths) or 1
            widths = [w - squeeze * (w - floor) / spare for w in widths]
        self._bytes = [p.start for p in parts] + [parts[-1].end if parts else 0]
        self._xs = [x0]
        for w in widths:
            self._xs.append(self._xs[-1] + w)

    def __call__(self, offset: int) -> float:
        b, xs = self._bytes, self._xs
        for i in range(len(b) - 1):
            if offset <= b[i + 1] or i == len(b) - 2:
                span = b[i + 1] - b[i]
                frac = (offset - b[i]) / span if span else 0.0
                return xs[i] + max(0.0, min(1.0, frac)) * (xs[i + 1] - xs[i])
        return xs[0]


class Canvas:
    """Collects SVG elements; ``str(canvas)`` is the document."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self._items: list[str] = []

    def rect(self, x: float, y: float, w: float, h: float, fill: str, *, stroke: str = "none",
             opacity: float = 1.0, extra: str = "") -> None:
        self._items.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" '
                           f'fill="{fill}" stroke="{stroke}" fill-opacity="{opacity}" {extra}/>')

    def polygon(self, points: Sequence[tuple[float, float]], fill: str, opacity: float) -> None:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self._items.append(f'<polygon points="{pts}" fill="{fill}" fill-opacity="{opacity}" '
                           f'stroke="{fill}" stroke-opacity="{min(1.0, opacity * 2):.2f}" stroke-width="0.6"/>')

    def text(self, x: float, y: float, s: str, *, size: float = 12, anchor: str = "start",
             weight: str = "normal", fill: str = "#222") -> None:
        self._items.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                           f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def raw(self, element: str) -> None:
        self._items.append(element)

    def __str__(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" height="{self.height:.0f}" '
                f'viewBox="0 0 {self.width:.0f} {self.height:.0f}" font-family="{FONT}">')
        defs = ('<defs><pattern id="pad" width="6" height="6" patternUnits="userSpaceOnUse" '
                'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ececec"/>'
                '<line x1="0" y1="0" x2="0" y2="6" stroke="#c4c4c4" stroke-width="2"/></pattern></defs>')
        bg = '<rect width="100%" height="100%" fill="#ffffff"/>'
        return "\n".join([head, defs, bg, *self._items, "</svg>", ""])


def text_fits(label: str, width: float, size: float = 11) -> bool:
    return width >= len(label) * size * 0.6 + 6


def draw_parts(c: Canvas, parts: Sequence[Part], scale: PageScale, y: float, h: float) -> None:
    """Coloured parts (hatched padding) with labels where they fit."""
    for p in parts:
        x0, x1 = scale(p.start), scale(p.end)
        fill = "url(#pad)" if p.key == "padding" else colour(p.key)
        c.rect(x0, y, x1 - x0, h, fill, stroke="#ffffff", extra='stroke-width="1"')
        label = p.label if text_fits(p.label, x1 - x0) else p.label.split(" ")[-1]
        if text_fits(label, x1 - x0):
            dark = p.key in ("padding", "V") or p.key.startswith("head:") and colour(p.key) == "#9ecae9"
            c.text((x0 + x1) / 2, y + h / 2 + 4, label, size=11, anchor="middle",
                   fill="#333" if dark else "#ffffff")
    if parts:
        c.rect(scale(parts[0].start), y, scale(parts[-1].end) - scale(parts[0].start), h, "none",
               stroke="#555", extra='stroke-width="1"')

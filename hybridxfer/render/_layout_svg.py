"""Draw one rank's layout: every region's page with each view (layer) over it.

Why views stacked per region: pooled hybrid layouts put an attention layer and several
Mamba layers over the same page; seeing them one above the other is what makes "one page,
several interpretations, padding" obvious.
"""

from __future__ import annotations

from hybridxfer.layout import RankLayout
from hybridxfer.render._svg import Canvas, PageScale, colour, draw_parts, page_parts

__all__ = ["layout_svg"]

WIDTH, MARGIN, LABEL_W, ROW_H = 1160.0, 24.0, 150.0, 24.0


def layout_svg(r: RankLayout) -> str:
    """SVG of every region of rank layout ``r`` and the views over one of its pages."""
    rows = sum(1 + len({p.layer for p in r.placements if p.region == name}) for name in r.region_names)
    c = Canvas(WIDTH, 76 + rows * (ROW_H + 6) - len(r.region_names) * 8 + len(r.region_names) * 10 + 30)
    c.text(MARGIN, 30, f"{r.layout.model}: rank {r.rank} of TP {r.tp}", size=18, weight="bold")
    c.text(MARGIN, 52, f"logical block {r.logical_block_tokens} tokens, kernel block {r.kernel_block_tokens} tokens; "
                       f"{len(r.region_names)} regions; one page of each, with every view over it", size=12, fill="#444")
    y = 76.0
    x0, width = MARGIN + LABEL_W, WIDTH - 2 * MARGIN - LABEL_W
    for name, page in zip(r.region_names, r.region_page_bytes, strict=True):
        c.text(MARGIN, y + 14, f"region {name}", size=13, weight="bold")
        c.text(WIDTH - MARGIN, y + 14, f"page {page:,} B", size=11, anchor="end", fill="#555")
        y += 22
        layers = list(dict.fromkeys(p.layer for p in r.placements if p.region == name))
        for layer in layers:
            kind = next(p.kind for p in r.placements if p.layer == layer)
            parts = page_parts(r, name, layer)
            pad = sum(p.size for p in parts if p.key == "padding")
            c.text(MARGIN + 8, y + 12, f"{layer}", size=11)
            c.text(MARGIN + 8, y + 23, f"{kind}, pad {pad:,} B", size=9, fill="#666")
            draw_parts(c, parts, PageScale(parts, x0, width), y, ROW_H)
            y += ROW_H + 6
        y += 10
    x = MARGIN
    for key, label in [("head:0", "K|V head"), ("x", "conv x"), ("B", "conv B"), ("C", "conv C"),
                       ("ssm", "SSM"), ("padding", "padding")]:
        c.rect(x, y, 16, 12, "url(#pad)" if key == "padding" else colour(key), stroke="#555",
               extra='stroke-width="0.6"')
        c.text(x + 22, y + 10, label, size=11)
        x += 34 + len(label) * 6.4
    c.text(WIDTH - MARGIN, y + 10, "widths not to scale (small parts widened)", size=10, anchor="end", fill="#666")
    return str(c)

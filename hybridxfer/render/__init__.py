"""Pictures of layouts and plans, as dependency-free SVG (PNG through an external rasteriser).

``plan_svg`` draws one D rank's plan: for one page of each view (attention K/V, conv
x/B/C, SSM, padding) the P pages it reads from, the D page it writes, and a band per
byte range. ``layout_svg`` draws one rank's regions and the views over each page.
``write_picture`` writes SVG, or PNG when the file name ends in ``.png``.
"""

from __future__ import annotations

from hybridxfer.render._layout_svg import layout_svg
from hybridxfer.render._plan_svg import plan_svg
from hybridxfer.render._write import RenderError, svg_to_png, write_picture

__all__ = ["RenderError", "layout_svg", "plan_svg", "svg_to_png", "write_picture"]

"""Writing pictures: SVG as text, PNG through ``rsvg-convert`` (or ImageMagick's ``convert``).

Why shell out: a rasteriser is a large native dependency that most users of a transfer
library never need; SVG is the product, PNG a convenience. We try ``rsvg-convert``
(``apt-get install librsvg2-bin``) first, then ``magick``/``convert``, and say exactly
what to install when neither works.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from hybridxfer.errors import HybridXferError

__all__ = ["RenderError", "svg_to_png", "write_picture"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class RenderError(HybridXferError):
    """A picture could not be written (no rasteriser for PNG, or it failed)."""


def _commands(svg_path: str, png_path: str) -> list[list[str]]:
    out: list[list[str]] = []
    if (rsvg := shutil.which("rsvg-convert")) is not None:
        out.append([rsvg, "--zoom", "2", "-o", png_path, svg_path])
    for name in ("magick", "convert"):
        if (tool := shutil.which(name)) is not None:
            out.append([tool, "-density", "192", svg_path, png_path])
    return out


def svg_to_png(svg: str) -> bytes:
    """Rasterise ``svg`` at twice its nominal size; raises :class:`RenderError`."""
    with tempfile.TemporaryDirectory(prefix="hybridxfer-render-") as tmp:
        svg_path, png_path = str(Path(tmp) / "in.svg"), str(Path(tmp) / "out.png")
        Path(svg_path).write_text(svg, encoding="utf-8")
        tried: list[str] = []
        for argv in _commands(svg_path, png_path):
            try:
                subprocess.run(argv, check=True, capture_output=True, timeout=60)
                data = Path(png_path).read_bytes()
            except (OSError, subprocess.SubprocessError) as exc:
                tried.append(f"{Path(argv[0]).name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
            if data.startswith(_PNG_MAGIC):
                return data
            tried.append(f"{Path(argv[0]).name}: did not produce a PNG")
    detail = "; ".join(tried) if tried else "none found"
    raise RenderError(f"cannot write PNG ({detail}): install rsvg-convert (apt-get install librsvg2-bin) "
                      "or ImageMagick, or use --svg")


def write_picture(svg: str, path: str) -> None:
    """Write ``svg`` to ``path``: PNG if it ends in ``.png``, SVG text otherwise."""
    try:
        if path.lower().endswith(".png"):
            Path(path).write_bytes(svg_to_png(svg))
        else:
            Path(path).write_text(svg, encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot write {path}: {exc}") from exc

"""Every relative link and image in docs/*.md and README.md points at a file that exists.

Inline links and images (``[text](target)``, ``![alt](target)``), reference definitions
(``[name]: target``) and HTML ``src=``/``href=`` attributes are checked; URLs with a
scheme (``https:``, ``mailto:``) and pure ``#anchors`` are not. Code blocks and inline
code are skipped, so a path shown as an example is not taken for a link.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^[ \t]*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HTML = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code (kept line-for-line)."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _INLINE_CODE.sub("``", text)


def relative_targets(page: Path) -> list[tuple[int, str]]:
    """(line, target) for every relative link or image on ``page``."""
    text = _prose(page.read_text(encoding="utf-8"))
    out = []
    for pattern in (_INLINE, _REFERENCE, _HTML):
        for m in pattern.finditer(text):
            target = m.group(1)
            if _SCHEME.match(target) or target.startswith("#"):
                continue
            out.append((text.count("\n", 0, m.start()) + 1, target))
    return sorted(out)


def test_pages_are_found() -> None:
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "cli.md", "errors.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for line, target in relative_targets(page):
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            broken.append(f"{page.relative_to(ROOT)}:{line}: {target} -> {resolved} does not exist")
    assert not broken, "\n".join(broken)


def test_the_link_finder_sees_what_it_should() -> None:
    page = ROOT / "docs" / "index.md"
    targets = {t for _, t in relative_targets(page)}
    assert {"performance.md", "reliability.md", "cli.md", "errors.md"} <= targets


def test_index_links_every_page() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {Path(t.split("#", 1)[0]).name for _, t in relative_targets(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"

"""Every runnable example in docs/ runs: ```python blocks of each page, and docs/examples/*.py.

Blocks of one page run in order in one namespace (a page reads as one session), from
the repository root. A block with top-level ``await`` runs under ``anyio.run``. A block
preceded by ``<!-- not-run -->`` is skipped: keep those for what truly cannot run here
(a GPU, a second host), and keep them rare.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"(?P<marker><!-- (?P<kind>not-run|include: [\w./-]+) -->\s*\n)?```python\n(?P<code>.*?)\n```",
                   re.DOTALL)


def python_blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, code, how) for each ```python block of ``page``: how is ``run``,
    ``not-run``, or ``include`` (a copy of a docs/examples file, which runs as a script)."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        kind = m.group("kind") or "run"
        out.append((text.count("\n", 0, m.start("code")) + 1, m.group("code"),
                    "include" if kind.startswith("include") else kind))
    return out


def _pages() -> Iterator[Path]:
    return iter(sorted(p for p in DOCS.glob("*.md") if any(h == "run" for _, _, h in python_blocks(p))))


@pytest.fixture
def in_repo_root() -> Iterator[None]:
    old = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def _run_block(code: str, filename: str, namespace: dict[str, object]) -> None:
    compiled = compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if compiled.co_flags & inspect.CO_COROUTINE:
        async def run() -> None:
            await eval(compiled, namespace)  # noqa: S307 - our own docs
        anyio.run(run)
    else:
        exec(compiled, namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize("page", list(_pages()), ids=lambda p: p.name)
def test_page_examples_run(page: Path, in_repo_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code, how in python_blocks(page):
        if how == "run":
            try:
                _run_block(code, f"{page.name}:{line}", namespace)
            except Exception as exc:
                raise AssertionError(f"{page.name}, block at line {line} failed: {exc!r}") from exc


EXAMPLES = sorted(p for p in (DOCS / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_scripts_run(script: Path, in_repo_root: None) -> None:
    runpy.run_path(str(script), run_name="__main__")


def test_engine_loop_reports_the_failed_request(in_repo_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(DOCS / "examples" / "engine_loop.py"))
    for backend in ("asyncio", "trio"):
        outcome = anyio.run(namespace["main"], backend=backend)
        assert outcome == {"req-1": "received", "req-2": "recompute (transfer)"}
    out = capsys.readouterr().out
    assert "req-2: FAILED (transfer" in out and "verified: every byte" in out


def test_not_run_blocks_are_rare() -> None:
    skipped = [(p.name, line) for p in DOCS.glob("*.md") for line, _, how in python_blocks(p) if how == "not-run"]
    assert len(skipped) <= 3, f"too many unexecuted examples: {skipped}"


def test_pages_that_embed_example_files_embed_them_verbatim() -> None:
    """A page may include ``docs/examples/X`` between ``<!-- include: X -->`` and
    ``<!-- end include -->``; the fenced text must equal the file."""
    pattern = re.compile(r"<!-- include: (?P<name>[\w./-]+) -->\n```\w*\n(?P<body>.*?)```\n<!-- end include -->",
                         re.DOTALL)
    for page in DOCS.glob("*.md"):
        for m in pattern.finditer(page.read_text(encoding="utf-8")):
            want = (DOCS / "examples" / m.group("name")).read_text(encoding="utf-8")
            assert m.group("body") == want, f"{page.name}: the copy of {m.group('name')} is stale"

"""Find the line of a key path in TOML text, so errors can say ``file:line``.

``tomllib`` keeps no positions, so we scan the text: table headers (``[a.b]``,
``[[a]]``), ``key =`` lines, and ``{`` of inline tables for list indices. Best effort:
when a path cannot be placed we return the line of its closest placed ancestor.
"""

from __future__ import annotations

import re

__all__ = ["Locator", "split_path"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")


def split_path(path: str) -> list[str | int]:
    """``regions[2].views`` -> ``["regions", 2, "views"]``."""
    out: list[str | int] = []
    for part in path.split("."):
        m = re.fullmatch(r"([^\[]*)((?:\[\d+\])*)", part)
        if not m:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return out


class Locator:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str, bool]] = []  # (line index, dotted name, is array)
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if m:
                name = m.group(2).replace('"', "").replace("'", "")
                self.headers.append((i, name, m.group(1) == "[["))

    def _section_end(self, start: int) -> int:
        for i, _, _ in self.headers:
            if i > start:
                return i
        return len(self.lines)

    def _find_key(self, key: str, start: int, end: int) -> int | None:
        pat = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=|[{{,]\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, end):
            if pat.search(self.lines[i]):
                return i
        return None

    def _nth_brace(self, n: int, start: int, end: int) -> int | None:
        depth_open = -1
        count = -1
        for i in range(start, end):
            for ch in self.lines[i]:
                if ch == "[" and depth_open < 0:
                    depth_open = 0
                if ch == "{":
                    count += 1
                    if count == n:
                        return i
        return None

    def line_of(self, path: str) -> int | None:
        """1-based line number of ``path``, or ``None`` if nothing of it is found."""
        parts = split_path(path)
        # 1. longest header prefix
        best: tuple[int, int] | None = None  # (line index, parts consumed)
        for consumed in range(len(parts), 0, -1):
            names = parts[:consumed]
            idx = None
            if isinstance(names[-1], int):
                idx = names[-1]
                names = names[:-1]
            if not names or not all(isinstance(n, str) for n in names):
                continue
            dotted = ".".join(str(n) for n in names)
            hits = [i for i, name, arr in self.headers if name == dotted and arr == (idx is not None)]
            if idx is not None and idx < len(hits):
                best = (hits[idx], consumed)
                break
            if idx is None and hits:
                best = (hits[0], consumed)
                break
            arrays = [i for i, name, arr in self.headers if name == dotted and arr]
            if idx is None and arrays:
                best = (arrays[0], consumed)
                break
        if best is None:
            start, end, rest = 0, self._section_end(-1), parts
            found: int | None = None
        else:
            start, consumed = best
            end = self._section_end(start)
            rest = parts[consumed:]
            found = start
            start += 1
        # 2. keys and inline indices inside the section
        for token in rest:
            if isinstance(token, str):
                line = self._find_key(token, start, end)
            else:
                line = self._nth_brace(token, start, end)
            if line is None:
                break
            found = line
            start = line if isinstance(token, int) else line
        return None if found is None else found + 1

"""The ``--blocks SPEC`` syntax of ``hybridxfer plan``: explicit block tables on the command line.

Why a syntax of its own: ``--tokens N`` only covers the contiguous-from-zero case, while
the interesting plans (scattered blocks, prefix hits, sliding windows) need real tables.

Grammar (whitespace ignored)::

    SPEC   := SIDE [ ";" SIDE ]
    SIDE   := [ ("src" | "dst") ":" ] ENTRY { "," ENTRY }
    ENTRY  := GROUP "=" IDS                   GROUP: a KV group name of the layout
    IDS    := ITEM { "+" ITEM }
    ITEM   := INT | INT "-" INT | "x"         inclusive range; "x" = no block (-1, outside a window)

A side without a prefix applies to both P and D. Block IDs lie below ``MAX_BLOCK_ID`` and a
side lists at most ``MAX_BLOCK_IDS`` of them, so a typo cannot make the planner build
tables of billions of entries. Examples::

    attention.0=0-3,mamba.0=4,mamba.1=5,mamba.2=6,mamba.3=7
    src:attention.0=0-3,mamba.0=4,...;dst:attention.0=10-13+20,mamba.0=30,...
"""

from __future__ import annotations

import attrs

__all__ = ["BlockSpec", "MAX_BLOCK_ID", "MAX_BLOCK_IDS", "parse_blocks"]

#: Block IDs are below 2**31 (engines index blocks with int32).
MAX_BLOCK_ID = (1 << 31) - 1
#: The most block IDs one side of ``--blocks`` may list.
MAX_BLOCK_IDS = 1 << 20


@attrs.frozen
class BlockSpec:
    """Parsed ``--blocks``: P's and D's block tables (group name -> logical block IDs)."""

    src: dict[str, list[int]]
    dst: dict[str, list[int]]


class BlockSpecError(ValueError):
    """``--blocks`` does not follow the grammar (reported as a usage error)."""


def _ids(text: str, where: str, listed: int = 0) -> list[int]:
    out: list[int] = []
    for item in text.split("+"):
        item = item.strip()
        if item == "x":
            out.append(-1)
            continue
        lo, sep, hi = item.partition("-")
        try:
            start, stop = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise BlockSpecError(f"{where}: {item!r} is not a block ID, a range A-B or 'x'") from None
        if start < 0 or stop < start:
            raise BlockSpecError(f"{where}: bad range {item!r}")
        if stop > MAX_BLOCK_ID:
            raise BlockSpecError(f"{where}: block ID {stop} is above the largest allowed, {MAX_BLOCK_ID}")
        if listed + len(out) + stop - start + 1 > MAX_BLOCK_IDS:
            raise BlockSpecError(f"{where}: more than {MAX_BLOCK_IDS:,} block IDs on one side")
        out.extend(range(start, stop + 1))
    return out


def _side(text: str) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        group, sep, ids = entry.partition("=")
        group = group.strip()
        if not sep or not group:
            raise BlockSpecError(f"{entry!r} is not GROUP=IDS")
        if group in table:
            raise BlockSpecError(f"group {group!r} given twice")
        table[group] = _ids(ids, group, sum(len(v) for v in table.values()))
    if not table:
        raise BlockSpecError("no GROUP=IDS entries")
    return table


def parse_blocks(spec: str) -> BlockSpec:
    """Parse a ``--blocks`` value; raises :class:`BlockSpecError` saying what is wrong."""
    sides: dict[str, dict[str, list[int]]] = {}
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise BlockSpecError("expected one side, or 'src:...;dst:...'")
    for part in parts:
        head, sep, rest = part.partition(":")
        key = head.strip() if sep and head.strip() in ("src", "dst") else "both"
        if key in sides or ("both" in sides) or (key == "both" and sides):
            raise BlockSpecError("give one unprefixed side, or one 'src:' and one 'dst:' side")
        sides[key] = _side(rest if key != "both" else part)
    if "both" in sides:
        return BlockSpec(sides["both"], {k: list(v) for k, v in sides["both"].items()})
    if set(sides) != {"src", "dst"}:
        raise BlockSpecError("with prefixes, give both 'src:' and 'dst:'")
    return BlockSpec(sides["src"], sides["dst"])

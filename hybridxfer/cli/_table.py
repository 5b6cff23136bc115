"""Plain-text tables for the CLI (no dependencies; right-aligned numbers, one row per rank)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["demo_table", "format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def demo_table(doc: dict[str, Any]) -> str:
    """The demo summary: what moved, per D rank, and whether every byte matched."""
    ranks = doc["ranks"]
    kinds = sorted({k for r in ranks for k in r["bytes_by_kind"]})
    header = ["D rank", "P ranks", *kinds, "descriptors", "padding skipped", "seconds", "GB/s", "verified"]
    rows = [[str(r["rank"]), ",".join(map(str, r["src_ranks"])),
             *(_mb(r["bytes_by_kind"].get(k, 0)) for k in kinds), f"{r['descriptors']:,}",
             f"{r['padding_bytes_skipped']:,} B", f"{r['seconds']:.3f}", f"{r['gbps']:.2f}",
             "yes" if r["verified"] else "NO"] for r in ranks]
    title = (f"{doc['model']}: P TP {doc['src_tp']} -> D TP {doc['dst_tp']} over {doc['transport']}, "
             f"{doc['requests']} x {doc['tokens']:,} tokens, separate processes on loopback")
    verdict = ("verified: every byte on every D rank matches the expected state"
               if doc["verified"] else "FAILED: some D rank holds wrong bytes (see above)")
    footer = (f"{_mb(doc['bytes'])} in {doc['seconds']:.3f} s = {doc['gbps']:.2f} GB/s aggregate "
              f"(all D ranks started together); {doc['wall_seconds']:.1f} s wall including process start-up")
    return "\n".join([title, "", format_table(header, rows), "", footer, verdict])

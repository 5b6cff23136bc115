"""The streaming benchmark's Markdown table (one row per case and mode)."""

from __future__ import annotations

from collections.abc import Sequence

from hybridxfer.bench._stream_results import StreamCaseResult

__all__ = ["stream_table"]


def stream_table(results: Sequence[StreamCaseResult]) -> str:
    lines = ["| transport | layout | P→D | tokens | MB | mode | prefill ms | bulk transfer ms | last group ms "
             "| tail ms med [min–max] | tail / last group | ttd ms med [min–max] | ttd speedup | bytes verified |",
             "|" + "---|" * 14]
    for r in results:
        doc = r.to_json()
        ratio = doc["tail_over_last_group"]
        lines.append(
            f"| {r.transport} | {r.layout} | {r.src_tp}→{r.dst_tp} | {r.tokens} | {r.bytes / 1e6:.1f} | {r.mode} "
            f"| {r.prefill.median * 1e3:.1f} | {r.bulk_transfer.median * 1e3:.1f} | {r.last_group_s * 1e3:.2f} "
            f"| {r.tail.median * 1e3:.1f} [{r.tail.min * 1e3:.1f}–{r.tail.max * 1e3:.1f}] "
            f"| {'—' if ratio is None else f'{ratio:.1f}'} "
            f"| {r.ttd.median * 1e3:.1f} [{r.ttd.min * 1e3:.1f}–{r.ttd.max * 1e3:.1f}] "
            f"| {doc['ttd_speedup']:.2f} | {'yes' if r.verified else '—'} |")
    return "\n".join(lines)

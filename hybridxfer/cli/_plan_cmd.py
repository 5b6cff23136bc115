"""``hybridxfer plan``: compile and bind a plan offline and show what it would move.

Why offline: an engine developer can check a (P layout, D layout, TP pair) before any
process starts — bytes by kind, descriptor counts, padding skipped, every descriptor in
``--json`` — and draw it (``--svg``/``--png``) to see the dual views and TP slicing.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import attrs

from hybridxfer.layout import Layout, RankLayout, load_layout
from hybridxfer.plan import PlanTemplate, TransferPlan

__all__ = ["BuiltPlan", "add_parser", "build_plan", "plan_json"]

log = logging.getLogger("hybridxfer.cli")

#: Descriptors listed per source rank in the readable summary (``--json`` lists all).
_SHOWN = 6


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="compile a transfer plan and summarise, dump or draw it",
                       description="Compile the plan one D rank runs to pull a request from every P rank.")
    p.add_argument("src_layout", metavar="SRC_LAYOUT")
    p.add_argument("--dst-layout", metavar="FILE", help="D's layout file (default: SRC_LAYOUT)")
    p.add_argument("--src-tp", type=int, required=True, metavar="P")
    p.add_argument("--dst-tp", type=int, required=True, metavar="D")
    p.add_argument("--dst-rank", type=int, default=0, metavar="R")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokens", type=int, metavar="N",
                       help="one request of N tokens, blocks contiguous from 0 in every group on both sides")
    which.add_argument("--blocks", metavar="SPEC",
                       help="explicit block tables: 'GROUP=IDS,...' for both sides or 'src:...;dst:...' "
                            "(IDS: 3, 0-7, 0-3+9, x for none); see docs/cli.md")
    p.add_argument("--no-coalesce", action="store_true", help="one descriptor per contiguous piece")
    p.add_argument("--json", action="store_true", help="the whole plan as JSON")
    p.add_argument("--svg", metavar="FILE", help="draw P's and D's pages and the ranges D reads")
    p.add_argument("--png", metavar="FILE", help="the same picture as PNG (needs rsvg-convert or convert)")
    p.set_defaults(handler=_run)


@attrs.frozen
class BuiltPlan:
    """A bound plan with the rank layouts it was compiled from (what the renderer needs)."""

    plan: TransferPlan
    template: PlanTemplate
    src: tuple[RankLayout, ...]
    dst: RankLayout
    tokens: int | None


def _num_blocks(layout: Layout, tp: int, rank: int, tokens: int | None, table: dict[str, list[int]] | None) -> int:
    from hybridxfer.testing.synthetic import blocks_for

    if table is not None:
        return max([1, *(b + 1 for ids in table.values() for b in ids)])
    assert tokens is not None
    return blocks_for(layout, tp, tokens, rank=rank)


def build_plan(src_file: str, dst_file: str | None, *, src_tp: int, dst_tp: int, dst_rank: int,
               tokens: int | None, blocks: str | None, coalesce: bool = True) -> BuiltPlan:
    """Load layouts, resolve every P rank and the D rank, compile and bind one request."""
    from hybridxfer.cli import UsageError
    from hybridxfer.cli._blocks import BlockSpecError, parse_blocks
    from hybridxfer.plan import compile_plan, contiguous_block_tables

    if src_tp < 1 or dst_tp < 1:
        raise UsageError("--src-tp and --dst-tp must be >= 1")
    if not 0 <= dst_rank < dst_tp:
        raise UsageError(f"--dst-rank {dst_rank} is outside D's TP size {dst_tp}")
    if tokens is not None and tokens < 1:
        raise UsageError("--tokens must be >= 1")
    try:
        spec = parse_blocks(blocks) if blocks is not None else None
    except BlockSpecError as exc:
        raise UsageError(f"--blocks: {exc}") from exc
    src_layout = load_layout(src_file)
    dst_layout = load_layout(dst_file) if dst_file else src_layout
    src = tuple(src_layout.for_rank(src_tp, r, num_blocks=_num_blocks(
        src_layout, src_tp, r, tokens, spec.src if spec else None)) for r in range(src_tp))
    dst = dst_layout.for_rank(dst_tp, dst_rank, num_blocks=_num_blocks(
        dst_layout, dst_tp, dst_rank, tokens, spec.dst if spec else None))
    template = compile_plan(src, dst, coalesce=coalesce)
    if spec is None:
        assert tokens is not None
        plan = template.bind(contiguous_block_tables(src[0], tokens), contiguous_block_tables(dst, tokens),
                             num_tokens=tokens)
    else:
        plan = template.bind(spec.src, spec.dst)
    log.info("planned P TP %d -> D rank %d/%d: %d bytes in %d descriptors", src_tp, dst_rank, dst_tp,
             plan.statistics.bytes, plan.statistics.descriptor_count)
    if log.isEnabledFor(logging.DEBUG):
        for reads in plan.reads:
            for row in reads.rows():
                log.debug("P%d %s", reads.src_rank, _describe(plan, row))
    return BuiltPlan(plan, template, src, dst, tokens)


def _describe(plan: TransferPlan, row: tuple[int, int, int, int, int]) -> str:
    sr, so, dr, do, n = row
    return f"{plan.src_region_names[sr]} @{so:,} -> {plan.dst_region_names[dr]} @{do:,}  {n:,} B"


def plan_json(built: BuiltPlan) -> dict[str, Any]:
    """The documented JSON form (``hybridxfer plan --json``); region names, byte offsets."""
    plan, stats = built.plan, built.plan.statistics
    src_names, dst_names = plan.src_region_names, plan.dst_region_names
    return {
        "model": built.dst.layout.model,
        "src_tp": plan.src_tp,
        "dst_tp": plan.dst_tp,
        "dst_rank": plan.dst_rank,
        "tokens": built.tokens,
        "chunk_tokens": built.template.chunk_tokens,
        "bytes": stats.bytes,
        "bytes_by_kind": dict(stats.bytes_by_kind),
        "padding_bytes_skipped": stats.padding_bytes_skipped,
        "descriptor_count": stats.descriptor_count,
        "descriptor_count_uncoalesced": stats.descriptor_count_uncoalesced,
        "notify_ranks": list(plan.notify_ranks),
        "dst_blocks": {g: list(b) for g, b in plan.dst_blocks.items()},
        "reads": [
            {"src_rank": reads.src_rank, "bytes": reads.total_bytes,
             "descriptors": [[src_names[sr], so, dst_names[dr], do, n] for sr, so, dr, do, n in reads.rows()]}
            for reads in plan.reads
        ],
    }


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.1f} MiB)"


def _summary(built: BuiltPlan) -> None:
    plan, stats = built.plan, built.plan.statistics
    src0, dst = built.src[0], built.dst
    what = f"{built.tokens} tokens" if built.tokens is not None else "blocks from --blocks"
    print(f"{dst.layout.model}: P TP {plan.src_tp} -> D TP {plan.dst_tp}, D rank {plan.dst_rank}, {what}")
    print(f"  blocks: P {src0.logical_block_tokens} tokens (kernel {src0.kernel_block_tokens}), "
          f"D {dst.logical_block_tokens} tokens (kernel {dst.kernel_block_tokens}); chunk {built.template.chunk_tokens}")
    print(f"  moves {_mib(stats.bytes)} in {stats.descriptor_count:,} descriptors "
          f"({stats.descriptor_count_uncoalesced:,} before coalescing)")
    for kind, n in sorted(stats.bytes_by_kind.items()):
        print(f"    {kind:<16}{n:>16,} B")
    print(f"  padding skipped: {stats.padding_bytes_skipped:,} B")
    print(f"  notifies P ranks {list(plan.notify_ranks)}")
    for reads in plan.reads:
        rows = reads.rows()
        print(f"  from P rank {reads.src_rank}: {_mib(reads.total_bytes)} in {len(rows):,} descriptors")
        for row in rows[:_SHOWN]:
            print(f"    {_describe(plan, row)}")
        if len(rows) > _SHOWN:
            print(f"    ... {len(rows) - _SHOWN:,} more (--json lists all)")


def _run(args: argparse.Namespace) -> int:
    built = build_plan(args.src_layout, args.dst_layout, src_tp=args.src_tp, dst_tp=args.dst_tp,
                       dst_rank=args.dst_rank, tokens=args.tokens, blocks=args.blocks,
                       coalesce=not args.no_coalesce)
    if args.svg or args.png:
        from hybridxfer.render import plan_svg, write_picture

        svg = plan_svg(built.plan, built.src, built.dst)
        if args.svg:
            write_picture(svg, args.svg)
        if args.png:
            write_picture(svg, args.png)
    if args.json:
        print(json.dumps(plan_json(built)))
    else:
        _summary(built)
    return 0

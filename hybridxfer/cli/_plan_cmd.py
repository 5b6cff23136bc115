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
    p.add_argument("src_layout", metavar="SRC_LAYOUT", help="P's layout file, or the model id of a shipped layout")
    p.add_argument("--dst-layout", metavar="FILE", help="D's layout file or model id (default: SRC_LAYOUT)")
    p.add_argument("--src-tp", type=int, required=True, metavar="P", help="TP size of P (every P rank is planned)")
    p.add_argument("--dst-tp", type=int, required=True, metavar="D", help="TP size of D")
    p.add_argument("--dst-rank", type=int, default=0, metavar="R", help="the D rank to plan for (default 0)")
    _add_pipeline_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokens", type=int, metavar="N",
                       help="one request of N tokens, blocks contiguous from 0 in every group on both sides")
    which.add_argument("--blocks", metavar="SPEC",
                       help="explicit block tables: 'GROUP=IDS,...' for both sides or 'src:...;dst:...' "
                            "(IDS: 3, 0-7, 0-3+9, x for none); see docs/cli.md")
    p.add_argument("--dst-cached-tokens", metavar="K",
                   help="D's prefix cache already holds the first K tokens (K, or GROUP=K,... per D group): "
                        "the plan keeps D's whole blocks inside the hit and moves the rest and every state")
    p.add_argument("--no-coalesce", action="store_true", help="one descriptor per contiguous piece")
    p.add_argument("--json", action="store_true", help="the whole plan as JSON")
    p.add_argument("--svg", metavar="FILE", help="draw P's and D's pages and the ranges D reads")
    p.add_argument("--png", metavar="FILE", help="the same picture as PNG (needs rsvg-convert or convert)")
    p.set_defaults(handler=_run)


def _add_pipeline_args(p: Any) -> None:
    """Pipeline parallelism: P's ranks are every (stage, TP rank); D's rank is one of them."""
    p.add_argument("--src-pp", type=int, default=1, metavar="N", help="PP size of P (default 1)")
    p.add_argument("--dst-pp", type=int, default=1, metavar="M", help="PP size of D (default 1)")
    p.add_argument("--dst-stage", type=int, default=0, metavar="S",
                   help="the PP stage of the D rank to plan for (default 0); --dst-rank is its TP rank")
    p.add_argument("--src-pp-partition", metavar="COUNTS",
                   help="P's layers per stage, e.g. 30,22 (VLLM_PP_LAYER_PARTITION; default: vLLM's split)")
    p.add_argument("--dst-pp-partition", metavar="COUNTS", help="D's layers per stage (as --src-pp-partition)")


def _partition(text: str | None, option: str) -> tuple[int, ...] | None:
    from hybridxfer.cli._usage import UsageError

    if text is None:
        return None
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise UsageError(f"{option} must be comma-separated layer counts such as 30,22, got {text!r}") from None


@attrs.frozen
class BuiltPlan:
    """A bound plan with the rank layouts it was compiled from (what the renderer needs)."""

    plan: TransferPlan
    template: PlanTemplate
    src: tuple[RankLayout, ...]
    dst: RankLayout
    tokens: int | None


def _num_blocks(layout: Layout, tp: int, rank: int, tokens: int | None, table: dict[str, list[int]] | None) -> int:
    from hybridxfer.synthetic import blocks_for

    if table is not None:
        return max([1, *(b + 1 for ids in table.values() for b in ids)])
    assert tokens is not None
    return blocks_for(layout, tp, tokens, rank=rank)


def build_plan(src_file: str, dst_file: str | None, *, src_tp: int, dst_tp: int, dst_rank: int,
               tokens: int | None, blocks: str | None, coalesce: bool = True, src_pp: int = 1, dst_pp: int = 1,
               dst_stage: int = 0, src_partition: tuple[int, ...] | None = None,
               dst_partition: tuple[int, ...] | None = None, dst_cached_tokens: str | None = None) -> BuiltPlan:
    """Load layouts, resolve every P rank and the D rank, compile and bind one request.

    ``dst_cached_tokens``: the ``--dst-cached-tokens`` text (``K`` or ``GROUP=K,...``).
    """
    from hybridxfer.cli._usage import UsageError
    from hybridxfer.cli._blocks import BlockSpecError, parse_blocks
    from hybridxfer.cli._layouts import resolve_layout
    from hybridxfer.cli._limits import MAX_TOKENS, check_tp
    from hybridxfer.plan import compile_plan, contiguous_block_tables

    check_tp(src_tp=src_tp, dst_tp=dst_tp)
    if not 0 <= dst_rank < dst_tp:
        raise UsageError(f"--dst-rank {dst_rank} is outside D's TP size {dst_tp}")
    check_tp(src_pp=src_pp, dst_pp=dst_pp)
    if not 0 <= dst_stage < dst_pp:
        raise UsageError(f"--dst-stage {dst_stage} is outside D's PP size {dst_pp}")
    if tokens is not None and not 1 <= tokens <= MAX_TOKENS:
        raise UsageError(f"--tokens must lie in [1, {MAX_TOKENS}]")
    try:
        spec = parse_blocks(blocks) if blocks is not None else None
    except BlockSpecError as exc:
        raise UsageError(f"--blocks: {exc}") from exc
    cached = _parse_cached(dst_cached_tokens) if dst_cached_tokens is not None else None
    src_layout = load_layout(resolve_layout(src_file))
    dst_layout = load_layout(resolve_layout(dst_file)) if dst_file else src_layout
    src = tuple(src_layout.for_rank(src_tp, r, num_blocks=_num_blocks(
        src_layout, src_tp, r, tokens, spec.src if spec else None), pp=src_pp, stage=stage, partition=src_partition)
        for stage in range(src_pp) for r in range(src_tp))
    dst = dst_layout.for_rank(dst_tp, dst_rank, num_blocks=_num_blocks(
        dst_layout, dst_tp, dst_rank, tokens, spec.dst if spec else None), pp=dst_pp, stage=dst_stage,
        partition=dst_partition)
    template = compile_plan(src, dst, coalesce=coalesce)
    if spec is None:
        assert tokens is not None
        plan = template.bind(contiguous_block_tables(src[0], tokens), contiguous_block_tables(dst, tokens),
                             num_tokens=tokens, dst_cached_tokens=cached)
    else:
        plan = template.bind(spec.src, spec.dst, dst_cached_tokens=cached)
    log.info("planned P TP %d -> D rank %d/%d: %d bytes in %d descriptors", src_tp, dst_rank, dst_tp,
             plan.statistics.bytes, plan.statistics.descriptor_count)
    if log.isEnabledFor(logging.DEBUG):
        for reads in plan.reads:
            for row in reads.rows():
                log.debug("P%d %s", reads.source_rank, _describe(plan, row))
    return BuiltPlan(plan, template, src, dst, tokens)


def _parse_cached(text: str) -> int | dict[str, int]:
    """``K`` (every group) or ``GROUP=K,GROUP=K`` (per D group); the planner checks the values."""
    from hybridxfer.cli._usage import UsageError

    def count(item: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"--dst-cached-tokens: {item!r} is not a token count") from None

    if "=" not in text:
        return count(text, text)
    out: dict[str, int] = {}
    for item in text.split(","):
        group, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not group:
            raise UsageError(f"--dst-cached-tokens: {item!r} is not GROUP=K")
        if group in out:
            raise UsageError(f"--dst-cached-tokens: group {group!r} is given twice")
        out[group] = count(item, value)
    return out


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
        "src_pp": plan.src_pp,
        "dst_pp": plan.dst_pp,
        "dst_stage": plan.dst_stage,
        "tokens": built.tokens,
        "chunk_tokens": built.template.chunk_tokens,
        "bytes": stats.bytes,
        "bytes_by_kind": dict(stats.bytes_by_kind),
        "padding_bytes_skipped": stats.padding_bytes_skipped,
        "descriptor_count": stats.descriptor_count,
        "descriptor_count_uncoalesced": stats.descriptor_count_uncoalesced,
        "notify_ranks": list(plan.notify_ranks),
        "dst_blocks": {g: [int(i) for i in b] for g, b in plan.dst_blocks.items()},
        "skipped_cached_bytes": stats.skipped_cached_bytes,
        "dst_cached": {g: {"requested_tokens": c.requested_tokens, "kept_tokens": c.kept_tokens,
                           "blocks": list(c.blocks)} for g, c in plan.cached_prefix.items()},
        "reads": [
            {"src_rank": reads.source_rank, "src_stage": plan.source_address(reads.source_rank)[0],
             "src_tp_rank": plan.source_address(reads.source_rank)[1], "bytes": reads.total_bytes,
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
    if plan.src_pp > 1 or plan.dst_pp > 1:
        print(f"  pipeline: P PP {plan.src_pp} (P rank = stage * {plan.src_tp} + TP rank) -> "
              f"D PP {plan.dst_pp}, D stage {plan.dst_stage} holds {len(dst.layers)} of {len(dst.layout.layers)} layers")
    print(f"  blocks: P {src0.logical_block_tokens} tokens (kernel {src0.kernel_block_tokens}), "
          f"D {dst.logical_block_tokens} tokens (kernel {dst.kernel_block_tokens}); chunk {built.template.chunk_tokens}")
    print(f"  moves {_mib(stats.bytes)} in {stats.descriptor_count:,} descriptors "
          f"({stats.descriptor_count_uncoalesced:,} before coalescing)")
    for kind, n in sorted(stats.bytes_by_kind.items()):
        print(f"    {kind:<16}{n:>16,} B")
    print(f"  padding skipped: {stats.padding_bytes_skipped:,} B")
    if plan.cached_prefix:
        print(f"  prefix-cache hit on D: {stats.skipped_cached_bytes:,} B not moved; every state still moves")
        for prefix in plan.cached_prefix.values():
            print(f"    {prefix.describe()}")
    print(f"  notifies P ranks {list(plan.notify_ranks)}")
    for reads in plan.reads:
        rows = reads.rows()
        print(f"  from P rank {reads.source_rank}: {_mib(reads.total_bytes)} in {len(rows):,} descriptors")
        for row in rows[:_SHOWN]:
            print(f"    {_describe(plan, row)}")
        if len(rows) > _SHOWN:
            print(f"    ... {len(rows) - _SHOWN:,} more (--json lists all)")


def _run(args: argparse.Namespace) -> int:
    built = build_plan(args.src_layout, args.dst_layout, src_tp=args.src_tp, dst_tp=args.dst_tp,
                       dst_rank=args.dst_rank, tokens=args.tokens, blocks=args.blocks,
                       coalesce=not args.no_coalesce, src_pp=args.src_pp, dst_pp=args.dst_pp,
                       dst_stage=args.dst_stage, dst_cached_tokens=args.dst_cached_tokens,
                       src_partition=_partition(args.src_pp_partition, "--src-pp-partition"),
                       dst_partition=_partition(args.dst_pp_partition, "--dst-pp-partition"))
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

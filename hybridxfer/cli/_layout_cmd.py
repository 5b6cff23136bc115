"""``hybridxfer layout check | show | expand | from-hf``: look at layout files.

Why ``check`` also instantiates at TP 1: a file can be syntactically valid yet fail to
resolve (views that do not fit their page, overlapping views); a check that misses those
would pass files the planner later rejects.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout import Layout, RankLayout, dump_layout, load_layout

__all__ = ["add_parser", "region_rows"]


def add_parser(sub: Any) -> None:
    layout = sub.add_parser("layout", help="check, show, expand or derive layout files")
    lsub = layout.add_subparsers(dest="layout_command", required=True, metavar="SUBCOMMAND")

    check = lsub.add_parser("check", help="report every problem in layout files (exit 1 if any)")
    check.add_argument("files", nargs="+", metavar="FILE|MODEL", help="layout files, or model ids of shipped layouts")
    check.set_defaults(handler=_check)

    show = lsub.add_parser("show", help="page sizes, views, offsets and padding of each rank")
    show.add_argument("file", metavar="FILE|MODEL", help="a layout file, or the model id of a shipped layout")
    show.add_argument("--tp", type=int, required=True, metavar="N", help="TP size to resolve the layout at")
    show.add_argument("--rank", type=int, default=None, metavar="R", help="one rank (default: every rank)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--svg", metavar="FILE", help="draw one rank's regions and views (--rank, default 0)")
    show.set_defaults(handler=_show)

    expand = lsub.add_parser("expand", help="print the explicit memory form")
    expand.add_argument("file", metavar="FILE|MODEL", help="a layout file, or the model id of a shipped layout")
    expand.set_defaults(handler=_expand)

    # Parsed by hybridxfer.hf itself (see cli.main); listed here for --help.
    lsub.add_parser("from-hf", help="derive a layout file from a Hugging Face config.json", add_help=False)


def _load(argument: str) -> Layout:
    from hybridxfer.cli._layouts import resolve_layout

    return load_layout(resolve_layout(argument))


def _check(args: argparse.Namespace) -> int:
    problems: list[LayoutProblem] = []
    for path in args.files:
        try:
            _load(path).for_rank(1, 0, num_blocks=1)
        except LayoutError as exc:
            problems.extend(p if p.file else LayoutProblem(p.message, path, p.line, p.path) for p in exc.problems)
        else:
            print(f"{path}: ok")
    for problem in problems:
        print(str(problem), file=sys.stderr)
    return 1 if problems else 0


def region_rows(r: RankLayout) -> list[dict[str, Any]]:
    """Per region: page bytes and, per view (layer), its pieces' in-page offsets and padding."""
    out: list[dict[str, Any]] = []
    for name, page, size in zip(r.region_names, r.region_page_bytes, r.region_sizes, strict=True):
        views: dict[str, dict[str, Any]] = {}
        for p in r.placements:
            if p.region != name:
                continue
            per_block = p.piece.nbytes * (r.blocks_per_kernel if p.piece.has_tokens else 1)
            offset = p.base % p.page_stride if p.page_stride else p.base
            view = views.setdefault(p.layer, {"layer": p.layer, "group": p.group, "kind": p.kind, "pieces": []})
            view["pieces"].append({"piece": p.piece.name, "offset": offset, "bytes": per_block,
                                   "dtype": p.piece.dtype})
        for view in views.values():
            used = sum(piece["bytes"] for piece in view["pieces"])
            view["bytes"] = used
            view["padding"] = page - used
        out.append({"region": name, "page_bytes": page, "bytes_per_block": page,
                    "region_bytes_per_block": size // r.num_blocks, "views": list(views.values())})
    return out


def _rank_dict(r: RankLayout) -> dict[str, Any]:
    return {"tp": r.tp, "rank": r.rank, "logical_block_tokens": r.logical_block_tokens,
            "kernel_block_tokens": r.kernel_block_tokens, "regions": region_rows(r)}


def _show(args: argparse.Namespace) -> int:
    from hybridxfer.cli._usage import UsageError
    from hybridxfer.cli._limits import check_tp

    layout = _load(args.file)
    check_tp(tp=args.tp)
    if args.rank is not None and not 0 <= args.rank < args.tp:
        raise UsageError(f"--rank {args.rank} is outside TP size {args.tp}")
    ranks = [args.rank] if args.rank is not None else list(range(args.tp))
    resolved = [layout.for_rank(args.tp, r, num_blocks=1) for r in ranks]
    if args.svg:
        from hybridxfer.render import layout_svg, write_picture

        write_picture(layout_svg(resolved[0]), args.svg)
    if args.json:
        print(json.dumps({"model": layout.model, "tp": args.tp, "ranks": [_rank_dict(r) for r in resolved]}, indent=2))
        return 0
    print(f"{layout.model}: TP {args.tp}, {len(layout.regions)} regions, {len(layout.layers)} cached layers")
    for r in resolved:
        print(f"\nrank {r.rank}/{r.tp}: logical block {r.logical_block_tokens} tokens, "
              f"kernel block {r.kernel_block_tokens} tokens")
        for row in region_rows(r):
            print(f"  region {row['region']}: page {row['page_bytes']:,} B")
            for view in row["views"]:
                pieces = ", ".join(f"{p['piece']} @{p['offset']:,} +{p['bytes']:,}" for p in view["pieces"])
                print(f"    {view['layer']:<12} {view['kind']:<14} {pieces}; padding {view['padding']:,} B")
    return 0


def _expand(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_layout(_load(args.file)))
    return 0

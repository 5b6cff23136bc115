"""``hybridxfer bench``: the command line over the harness.

Modes: default (the full matrix: every transport, layout, TP pair and size), ``--quick`` (CI smoke: tiny requests, one
layout, asserts nothing about time; verifies every byte of the largest request), and
filters (``--transports``, ``--layouts``, ``--pairs``, ``--tokens``) to run a slice.
``--json`` prints ``{"cases": [...], "planner": [...]}``; otherwise Markdown tables.
``--streaming`` runs the streaming benchmark instead (:mod:`hybridxfer.bench._streaming`):
bulk vs pull/push layer streaming under a simulated prefill; its cases carry ``mode``,
``tail_s``, ``ttd_s`` and ``ttd_speedup``. ``--memory cuda`` keeps P's and D's regions as
torch CUDA tensors registered as they are (nixl; P rank r on device ``--cuda-device + r``, D
on the next, modulo the device count) and fails with a typed error where CUDA is absent or a
transport moves host memory only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs

from hybridxfer.bench._cuda import require_cuda
from hybridxfer.bench._placement import HOST, Placement, cuda_placements, default_cuda_device
from hybridxfer.bench._e2e import Group, run_group
from hybridxfer.bench._prefill import DEFAULT_FLOPS
from hybridxfer.bench._stream_report import stream_table
from hybridxfer.bench._stream_results import StreamCaseResult
from hybridxfer.bench._streaming import MODES, StreamGroup, run_stream_group
from hybridxfer.errors import HybridXferError
from hybridxfer.bench._planner import run_planner_benchmark
from hybridxfer.bench._report import case_table, planner_table, svg_chart
from hybridxfer.bench._results import CaseResult, PlannerResult

__all__ = ["main"]

_LAYOUT_DIR = Path(__file__).resolve().parents[2] / "layouts"
FULL_LAYOUTS = ("nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b")
FULL_PAIRS = ((1, 1), (1, 4), (4, 2))
FULL_TOKENS = (4096, 32768, 131072)


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in text.split(","):
        p, d = item.lower().replace("p", "").split("d")
        out.append((int(p.rstrip(":-")), int(d)))
    return tuple(out)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hybridxfer bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: tiny sizes, < 60 s")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--transports", default="tcp,nixl,ucxx")
    ap.add_argument("--layouts", default=",".join(FULL_LAYOUTS), help="names in layouts/ or paths")
    ap.add_argument("--pairs", default="P1D1,P1D4,P4D2", help="e.g. P1D1,P4D2")
    ap.add_argument("--tokens", default=",".join(map(str, FULL_TOKENS)))
    ap.add_argument("--concurrent", default="32x1024", help="REQUESTSxTOKENS at P1->D1, or 'none'")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--verify", action="store_true", help="fill with oracle data and check every byte")
    ap.add_argument("--no-planner", action="store_true", help="skip the planner benchmark")
    ap.add_argument("--no-e2e", action="store_true", help="skip transfers (planner benchmark only)")
    ap.add_argument("--ucxx-error-handling", choices=("on", "off"), default="on",
                    help="endpoint_error_handling for the ucxx plugin and its raw ceiling")
    ap.add_argument("--tls", action="store_true",
                    help="run tcp twice, also with TLS 1.3 (throwaway certificates): rows tcp and tcp+tls")
    ap.add_argument("--streaming", action="store_true",
                    help="bulk vs pull/push layer streaming under a simulated prefill (P1D1,P1D4,P4D2; 4k/32k)")
    ap.add_argument("--modes", default="bulk,pull-stream,push-stream", help="streaming modes to run")
    ap.add_argument("--flops", type=float, default=DEFAULT_FLOPS,
                    help="FLOP/s of the simulated prefill (default 400e12)")
    ap.add_argument("--layer-ms", type=float, help="simulated prefill: every model layer takes this long instead")
    ap.add_argument("--memory", choices=("cpu", "cuda"), default="cpu",
                    help="where D and P keep their caches: numpy host memory or torch CUDA tensors (nixl)")
    ap.add_argument("--cuda-device", type=int,
                    help="first CUDA device for --memory cuda (default: $LOCAL_RANK, else 0)")
    ap.add_argument("--svg", type=Path, help="write the throughput plot here")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    return ap


def _relabelled(report: Callable[[CaseResult], None], label: str) -> Callable[[CaseResult], None]:
    return lambda result: report(attrs.evolve(result, transport=label))


def _throwaway_tls(directory: str) -> dict[str, str]:
    """A fresh CA and one certificate every bench process uses (``tls`` as JSON-able options)."""
    from hybridxfer.transport.pki import CertificateAuthority

    config = CertificateAuthority.create(Path(directory) / "ca", "hybridxfer-bench-ca").issue("bench")
    return {"cert": str(config.cert), "key": str(config.key), "ca": str(config.ca)}


def _placements(args: argparse.Namespace, src_tp: int) -> tuple[Placement, tuple[Placement, ...]]:
    """Where D and each P rank keep their regions: host memory unless ``--memory cuda``."""
    if args.cuda is None:
        return HOST, ()
    return cuda_placements(args.cuda[0], src_tp, args.cuda[1])


def _memory_json(args: argparse.Namespace) -> dict[str, object]:
    """``memory`` ("cpu" | "cuda"), and for cuda the first device and the device count."""
    if args.cuda is None:
        return {"memory": "cpu"}
    return {"memory": "cuda", "cuda_device": args.cuda[0], "cuda_device_count": args.cuda[1]}


def _layout_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix == ".toml" else _LAYOUT_DIR / f"{name}.toml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.memory == "cuda":
            try:
                base = default_cuda_device() if args.cuda_device is None else args.cuda_device
            except ValueError as exc:
                parser.error(f"--memory cuda: {exc}; pass --cuda-device N")
            args.cuda = (base, require_cuda(args.transports.split(","), base))
        else:
            args.cuda = None
        if args.streaming:
            return _streaming(args, parser)
    except HybridXferError as exc:
        print(f"hybridxfer bench: error: {exc}", file=sys.stderr)
        return 2
    if args.tls and "tcp" not in args.transports.split(","):
        parser.error("--tls measures the tcp transport: include tcp in --transports")
    if args.quick:
        args.layouts, args.pairs, args.tokens = "nemotron-3-nano-30b-a3b", "P1D1,P1D2", "512"
        args.concurrent, args.verify, args.repeats = "4x512", True, 5
    layouts = [_layout_path(n) for n in args.layouts.split(",") if n]
    pairs = _pairs(args.pairs)
    tokens = tuple(int(t) for t in args.tokens.split(","))
    conc = None if args.concurrent == "none" else tuple(int(v) for v in args.concurrent.lower().split("x"))
    planner: list[PlannerResult] = []
    if not args.no_planner:
        nemotron = _layout_path("nemotron-3-nano-30b-a3b")
        planner = run_planner_benchmark(nemotron, [(1, 4), (4, 2)], 2048 if args.quick else 131072, args.repeats)
        if not args.json:
            print(planner_table(planner), "\n", flush=True)
    cases: list[CaseResult] = []

    def report(result: CaseResult) -> None:
        cases.append(result)
        if not args.json:
            print(case_table([result]).splitlines()[-1], flush=True)

    tls_dir = tempfile.mkdtemp(prefix="hx-bench-tls-") if args.tls else ""
    if not args.no_e2e:
        if not args.json:
            print("\n".join(case_table([]).splitlines()[:2]), flush=True)
        runs = [(t, t) for t in args.transports.split(",")]
        if args.tls and "tcp" in args.transports.split(","):
            runs.insert(runs.index(("tcp", "tcp")) + 1, ("tcp", "tcp+tls"))
        for transport, label in runs:
            options: tuple[tuple[str, object], ...] = ()
            if transport == "ucxx":
                options = (("endpoint_error_handling", args.ucxx_error_handling == "on"),)
            if label == "tcp+tls":
                options = (("tls", _throwaway_tls(tls_dir)),)
            for layout in layouts:
                for src_tp in sorted({p for p, _ in pairs}):
                    decode, prefill = _placements(args, src_tp)
                    group = Group(
                        transport=transport, layout_path=layout, src_tp=src_tp,
                        cases=tuple((d, t) for p, d in pairs if p == src_tp for t in tokens),
                        concurrent=(1, conc[0], conc[1]) if conc and src_tp == 1 and layout == layouts[0] else None,
                        repeats=args.repeats, verify=args.verify, options=options,
                        memory=decode, prefill_memory=prefill)
                    anyio.run(run_group, group, report if label == transport else _relabelled(report, label))
    if tls_dir:
        shutil.rmtree(tls_dir, ignore_errors=True)
    doc = {"cases": [c.to_json() for c in cases], "planner": [p.to_json() for p in planner], **_memory_json(args)}
    if args.json:
        print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))
    if args.svg:
        args.svg.write_text(svg_chart(cases))
    return 0


def _streaming(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    modes = tuple(args.modes.split(","))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; known {list(MODES)}")
    if args.quick:
        args.layouts, args.pairs, args.tokens, args.verify, args.repeats = \
            "nemotron-3-nano-30b-a3b", "P1D1,P1D2", "512", True, 2
    elif args.tokens == ",".join(map(str, FULL_TOKENS)):
        args.tokens = "4096,32768"
    pairs = _pairs(args.pairs)
    tokens = tuple(int(t) for t in args.tokens.split(","))
    results: list[StreamCaseResult] = []

    def report(result: StreamCaseResult) -> None:
        results.append(result)
        if not args.json:
            print(stream_table([result]).splitlines()[-1], flush=True)

    if not args.json:
        print("\n".join(stream_table([]).splitlines()[:2]), flush=True)
    for transport in args.transports.split(","):
        options: tuple[tuple[str, object], ...] = ()
        if transport == "ucxx":
            options = (("endpoint_error_handling", args.ucxx_error_handling == "on"),)
        for name in args.layouts.split(","):
            for src_tp in sorted({p for p, _ in pairs}):
                decode, prefill = _placements(args, src_tp)
                group = Group(transport=transport, layout_path=_layout_path(name), src_tp=src_tp,
                              cases=tuple((d, t) for p, d in pairs if p == src_tp for t in tokens),
                              repeats=args.repeats, verify=args.verify, options=options,
                              memory=decode, prefill_memory=prefill)
                sg = StreamGroup(group=group, modes=modes, flops_per_s=args.flops, layer_ms=args.layer_ms)
                anyio.run(run_stream_group, sg, report)
    doc = {"cases": [r.to_json() for r in results], "flops_per_s": args.flops, "layer_ms": args.layer_ms,
           **_memory_json(args)}
    if args.json:
        print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

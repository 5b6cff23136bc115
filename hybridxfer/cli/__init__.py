"""The ``hybridxfer`` command line: one small module per command family.

Why argparse and one dispatcher: every command shares the same contract — exit 0 on
success, 1 with one clear ``error:`` line (no traceback) on any
:class:`~hybridxfer.errors.HybridXferError`, 2 on usage errors — and the same ``-v``
logging switch. Command modules are imported lazily so ``hybridxfer layout check`` does
not pay for anyio or the transports.

Synopsis::

    hybridxfer [-v|-vv] layout check FILE...
    hybridxfer layout show FILE --tp N [--rank R] [--json] [--svg FILE]
    hybridxfer layout expand FILE
    hybridxfer layout from-hf CONFIG.json [--engine vllm] [-o FILE] [--model-id ID]
    hybridxfer plan SRC_LAYOUT [--dst-layout FILE] --src-tp P --dst-tp D [--dst-rank R]
                    (--tokens N | --blocks SPEC) [--no-coalesce] [--json] [--svg FILE] [--png FILE]
    hybridxfer serve LAYOUT --tp P [--rank R] --listen HOST:PORT [--transport NAME]
                     [--tokens N] [--requests K] [--secret-file F] [--advertise HOST] [--max-pulls K]
    hybridxfer pull LAYOUT --src-tp P --dst-tp D --rank R --connect HOST:PORT... --tokens N
                    [--requests K] [--transport NAME] [--secret-file F] [--timeout S] [--json]
    hybridxfer demo [--layout FILE] [--src-tp P] [--dst-tp D] [--transport NAME] [--tokens N]
                    [--requests K] [--timeout S] [--json]
    hybridxfer bench ...   (see ``hybridxfer bench --help``)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hybridxfer.errors import HybridXferError

__all__ = ["main"]

log = logging.getLogger("hybridxfer.cli")


class UsageError(Exception):
    """A command-line mistake found after parsing (exit status 2, like argparse's own)."""


def _parser() -> argparse.ArgumentParser:
    from hybridxfer.cli import _demo, _layout_cmd, _plan_cmd, _pull, _serve

    parser = argparse.ArgumentParser(
        prog="hybridxfer",
        description="Move hybrid KV-cache and SSM state between inference workers.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: INFO (handshakes, plans, failures); -vv: DEBUG (descriptors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _layout_cmd.add_parser(sub)
    _plan_cmd.add_parser(sub)
    _serve.add_parser(sub)
    _pull.add_parser(sub)
    _demo.add_parser(sub)
    sub.add_parser("bench", help="throughput and planning benchmarks (see 'hybridxfer bench --help')",
                   add_help=False)
    return parser


def _bench(argv: list[str]) -> int:
    """Delegate to :mod:`hybridxfer.bench` (imported here: it is optional and heavy)."""
    try:
        from hybridxfer import bench
    except ImportError as exc:
        raise UsageError(f"'hybridxfer bench' is not available in this installation: {exc}") from exc
    return int(bench.main(argv))


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hybridxfer").setLevel(level)


def _one_line(exc: HybridXferError) -> str:
    """A single-problem LayoutError reads as one ``file:line: path: message`` line."""
    from hybridxfer.errors import LayoutError

    if isinstance(exc, LayoutError) and len(exc.problems) == 1:
        return str(exc.problems[0])
    return str(exc)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first HybridXferError inside (nested) exception groups, else the group itself."""
    for exc in group.exceptions:
        inner = _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(inner, (HybridXferError, UsageError, KeyboardInterrupt)):
            return inner
    return group


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (0 ok, 1 error, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `bench` and `layout from-hf` own their parsers (and --help): hand them the rest untouched.
    lead = 0
    while lead < len(args_list) and args_list[lead] in ("-v", "-vv", "-vvv", "--verbose"):
        lead += 1
    head, rest = args_list[lead:lead + 2], args_list[lead:]
    if head[:1] == ["bench"] or head == ["layout", "from-hf"]:
        _configure_logging(sum(a.count("v") if a != "--verbose" else 1 for a in args_list[:lead]))
        try:
            if head[:1] == ["bench"]:
                return _bench(rest[1:])
            from hybridxfer.hf import main_from_hf

            return main_from_hf(rest[2:])
        except UsageError as exc:
            print(f"hybridxfer: error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # their argparse: --help (0) or usage error (2)
            return int(exc.code) if isinstance(exc.code, int) else 2
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    _configure_logging(args.verbose)
    try:
        try:
            return int(args.handler(args))
        except BaseExceptionGroup as group:  # from task groups: report the first of our errors
            raise _first_error(group) from group
    except UsageError as exc:
        print(f"hybridxfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except HybridXferError as exc:
        log.debug("command failed", exc_info=True)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hybridxfer plan --json | head`
        return 1

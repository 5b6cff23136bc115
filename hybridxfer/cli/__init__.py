"""The ``hybridxfer`` command line: one small module per command family.

Why argparse and one dispatcher: every command shares the same contract — exit 0 on
success, 1 with one clear ``error:`` line (no traceback) on any
:class:`~hybridxfer.errors.HybridXferError` (and on any other exception: a command line
never shows a traceback; ``-vv`` logs it), 2 on usage errors; with ``--json`` the same
failure also as ``{"error": {"type", "message", ...}}`` on stdout — and the same ``-v``
logging switch. Command modules are imported lazily so ``hybridxfer layout check`` does
not pay for anyio or the transports.

Synopsis::

    hybridxfer [-v|-vv] layout check FILE|MODEL...
    hybridxfer layout show FILE|MODEL --tp N [--rank R] [--json] [--svg FILE]
    hybridxfer layout expand FILE|MODEL
    hybridxfer layout from-hf CONFIG.json [--engine vllm] [-o FILE] [--model-id ID]
    hybridxfer plan SRC_LAYOUT [--dst-layout FILE] --src-tp P --dst-tp D [--dst-rank R]
                    (--tokens N | --blocks SPEC) [--no-coalesce] [--json] [--svg FILE] [--png FILE]
    hybridxfer serve LAYOUT --tp P [--rank R] --listen HOST:PORT [--transport NAME]
                     [--tokens N] [--requests K] [--secret-file F] [--advertise HOST] [--max-pulls K]
                     [--metrics-port PORT [--metrics-host HOST]]
    hybridxfer pull LAYOUT --src-tp P --dst-tp D --rank R --connect HOST:PORT... [--tokens N]
                    [--requests K] [--transport NAME] [--secret-file F] [--timeout S] [--json]
    hybridxfer demo [--layout FILE|MODEL] [--src-tp P] [--dst-tp D] [--transport NAME] [--tokens N]
                    [--requests K] [--timeout S] [--json]
    hybridxfer demo --engine transformers [--family NAME] [--src-tp P] [--dst-tp D] [--transport NAME] [--json]
    hybridxfer bench ...   (see ``hybridxfer bench --help``)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from hybridxfer.cli._usage import UsageError
from hybridxfer.errors import HybridXferError

__all__ = ["main"]

log = logging.getLogger("hybridxfer.cli")


class _ArgumentError(Exception):
    """argparse's own usage error, raised instead of exiting so ``--json`` can report it."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors come back to :func:`main` (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message, self)


def _parser() -> argparse.ArgumentParser:
    from hybridxfer.cli import _demo, _layout_cmd, _plan_cmd, _pull, _serve

    parser = _Parser(
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


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first HybridXferError inside (nested) exception groups, else the group itself."""
    for exc in group.exceptions:
        inner = _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(inner, (HybridXferError, UsageError, KeyboardInterrupt)):
            return inner
    return group


def _wants_json(args_list: Sequence[str]) -> bool:
    return "--json" in args_list


def _fail(exc: BaseException, status: int, prefix: str, as_json: bool) -> int:
    """Report one failure: one line on stderr, and with ``--json`` the error object on stdout."""
    from hybridxfer.cli._report import error_document, error_line

    print(f"{prefix}{error_line(exc)}", file=sys.stderr)
    if as_json:
        import json

        print(json.dumps(error_document(exc, status)), flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (0 ok, 1 error, 2 usage).

    Called without ``argv`` it is the ``hybridxfer`` process itself: then, once a native
    transport library has been loaded, it ends the process here (see :mod:`._exit`).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if argv is None:
        from hybridxfer.cli._stdout import preload_transports, route_native_output_to_stderr

        route_native_output_to_stderr()
        preload_transports(_transport_names(args_list))
    status = _main(args_list)
    if argv is None:
        from hybridxfer.cli._exit import exit_process

        exit_process(status)
    return status


def _transport_names(args_list: Sequence[str]) -> list[str]:
    """The transports a command line names (``--transport X``, bench's ``--transports X,Y``)."""
    names: list[str] = []
    for flag, value in zip(args_list, args_list[1:]):
        if flag in ("--transport", "--transports"):
            names.extend(v.strip() for v in value.split(",") if v.strip())
    return names


def _main(args_list: list[str]) -> int:
    as_json = _wants_json(args_list)
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
            from hybridxfer.cli._from_hf import main_from_hf

            return main_from_hf(rest[2:])
        except UsageError as exc:
            return _fail(exc, 2, "hybridxfer: error: ", as_json)
        except SystemExit as exc:  # their argparse: --help (0) or usage error (2)
            return int(exc.code) if isinstance(exc.code, int) else 2
        except HybridXferError as exc:
            return _fail(exc, 1, "error: ", as_json)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - no traceback from the CLI, ever (-vv logs it)
            log.debug("command failed", exc_info=True)
            return _fail(exc, 1, "error: ", as_json)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except _ArgumentError as exc:
        exc.parser.print_usage(sys.stderr)
        return _fail(UsageError(str(exc)), 2, f"{exc.parser.prog}: error: ", as_json)
    except SystemExit as exc:  # argparse: --help (0)
        return int(exc.code) if isinstance(exc.code, int) else 2
    _configure_logging(args.verbose)
    as_json = bool(getattr(args, "json", False))
    try:
        try:
            return int(args.handler(args))
        except BaseExceptionGroup as group:  # from task groups: report the first of our errors
            raise _first_error(group) from group
    except UsageError as exc:
        return _fail(exc, 2, f"hybridxfer {args.command}: error: ", as_json)
    except HybridXferError as exc:
        log.debug("command failed", exc_info=True)
        return _fail(exc, 1, "error: ", as_json)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hybridxfer plan --json | head`
        return 1
    except Exception as exc:  # noqa: BLE001 - no traceback from the CLI, ever (-vv logs it)
        log.debug("command failed", exc_info=True)
        return _fail(exc, 1, "error: ", as_json)

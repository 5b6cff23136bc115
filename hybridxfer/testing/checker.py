"""The pytest-free conformance checker: ``await check_transport(...)`` runs every check.

Why separate from :mod:`hybridxfer.testing.conformance`: a plugin author can run the
suite from a script or a REPL on a new machine without pytest, and get one
:class:`CheckResult` per rule instead of a traceback at the first failure.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
import attrs

from hybridxfer.testing._checks import IN_PROCESS_CHECKS, ConformanceFailure, TransportFactory
from hybridxfer.testing._cross_process import CROSS_PROCESS_CHECKS
from hybridxfer.testing._write_checks import WRITE_CHECKS
from hybridxfer.transport.registry import open_transport

__all__ = ["CheckResult", "ConformanceFailure", "assert_conformance", "check_transport"]


@attrs.frozen
class CheckResult:
    name: str
    passed: bool
    seconds: float
    error: str = ""


async def check_transport(transport: str, options: Mapping[str, object] | None = None, *,
                          factory: TransportFactory | None = None, cross_process: bool = True,
                          check_timeout: float = 120.0) -> list[CheckResult]:
    """Run the suite against the transport registered as ``transport``.

    ``factory(agent_name)`` overrides how in-process transports are built (e.g. to wrap
    them); cross-process checks always go through the registry name and ``options``,
    because the peer process must build its transport from them.
    """
    opts = dict(options or {})
    make = factory or (lambda name: open_transport(transport, name=name, **opts))
    results: list[CheckResult] = []
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (n, functools.partial(c, make)) for n, c in {**IN_PROCESS_CHECKS, **WRITE_CHECKS}.items()
    ]
    if cross_process:
        checks += [(n, functools.partial(c, transport, opts)) for n, c in CROSS_PROCESS_CHECKS.items()]
    for name, run in checks:
        started = time.perf_counter()
        try:
            with anyio.fail_after(check_timeout):
                await run()
        except (Exception, TimeoutError) as exc:
            results.append(CheckResult(name, False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(CheckResult(name, True, time.perf_counter() - started))
    return results


async def assert_conformance(transport: str, options: Mapping[str, object] | None = None, **kwargs: object) -> None:
    """Like :func:`check_transport`, raising :class:`ConformanceFailure` listing every failed rule."""
    results = await check_transport(transport, options, **kwargs)  # type: ignore[arg-type]
    failed = [r for r in results if not r.passed]
    if failed:
        raise ConformanceFailure("; ".join(f"{r.name}: {r.error}" for r in failed))

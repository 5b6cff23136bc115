"""``hybridxfer bench``: transfer throughput beside raw ceilings, and planner cost.

Why it lives in the package (not only in ``benchmarks/``): the CLI subcommand must work
from an installed distribution. ``main(argv)`` is the entry point; see
``docs/performance.md`` for the method and the figures.
"""

from __future__ import annotations

from hybridxfer.bench._cli import main

__all__ = ["main"]

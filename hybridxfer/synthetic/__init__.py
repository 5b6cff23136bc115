"""Synthetic cache contents, and the byte oracle that says what every byte must be.

Why a package of its own: the command line (``serve``, ``pull``, ``demo``, ``bench``)
fills and verifies caches with these, and the test suites check plans against them, but
the command line never imports :mod:`hybridxfer.testing`. The oracle recomputes each
rank's bytes from the layout's declarative description and the engines' formulas, sharing
no code with the planner.
"""

from __future__ import annotations

from hybridxfer.synthetic._caches import (
    blocks_for,
    destination_memory,
    expected_destination,
    mismatches,
    request_tables,
    source_memory,
)
from hybridxfer.synthetic._oracle import (
    RankSpec,
    Request,
    blank_destination,
    expected_memory,
    fill_source_memory,
    region_bytes,
)

__all__ = [
    "RankSpec",
    "Request",
    "blank_destination",
    "blocks_for",
    "destination_memory",
    "expected_destination",
    "expected_memory",
    "fill_source_memory",
    "mismatches",
    "region_bytes",
    "request_tables",
    "source_memory",
]

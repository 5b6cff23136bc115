"""The sans-IO planner: layouts in, descriptors out. Never imports anyio, torch or sockets.

``compile_plan(src_ranks, dst_rank)`` builds (and caches) a :class:`PlanTemplate`;
``template.bind(src_blocks, dst_blocks)`` turns one request's block IDs into a
:class:`TransferPlan` of columnar descriptors per source rank.
"""

from __future__ import annotations

from hybridxfer.plan._bind import bind, contiguous_block_tables
from hybridxfer.plan._plan import PlanStatistics, SourceReads, TransferPlan
from hybridxfer.plan._sources import natural_sources
from hybridxfer.plan._template import Job, PlanTemplate, compile_plan

__all__ = [
    "Job",
    "PlanStatistics",
    "PlanTemplate",
    "SourceReads",
    "TransferPlan",
    "bind",
    "compile_plan",
    "contiguous_block_tables",
    "natural_sources",
]

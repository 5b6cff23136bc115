"""The sans-IO planner: layouts in, descriptors out. Never imports anyio, torch or sockets.

``compile_plan(src_ranks, dst_rank)`` builds (and caches) a :class:`PlanTemplate`;
``template.bind(src_blocks, dst_blocks)`` turns one request's block IDs into a
:class:`TransferPlan` holding one :class:`~hybridxfer.descriptors.Descriptors` table
(every source rank's rows, coalesced).
"""

from __future__ import annotations

from hybridxfer.descriptors import Descriptors
from hybridxfer.plan._bind import bind, contiguous_block_tables
from hybridxfer.plan._plan import PlanStatistics, TransferPlan
from hybridxfer.plan._prefix import CachedPrefix, CachedTokens
from hybridxfer.plan._sources import natural_sources
from hybridxfer.plan._template import Job, PlanTemplate, compile_plan

__all__ = [
    "CachedPrefix",
    "CachedTokens",
    "Descriptors",
    "Job",
    "PlanStatistics",
    "PlanTemplate",
    "TransferPlan",
    "bind",
    "compile_plan",
    "contiguous_block_tables",
    "natural_sources",
]

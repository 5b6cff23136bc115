"""The sans-IO planner: layouts in, descriptors out. Never imports anyio, torch or sockets.

``compile_plan(src_ranks, dst_rank)`` builds (and caches) a :class:`PlanTemplate`;
``template.bind(src_blocks, dst_blocks)`` turns one request's block IDs into a
:class:`TransferPlan` holding one :class:`~hybridxfer.descriptors.Descriptors` table
(every source rank's rows, coalesced). ``template.stream(...)`` binds the same request as
a :class:`StreamSchedule`, which hands the rows out layer group by layer group as P's
prefill reports each layer final (:class:`Readiness`).
"""

from __future__ import annotations

from hybridxfer.descriptors import Descriptors
from hybridxfer.plan._bind import bind, contiguous_block_tables
from hybridxfer.plan._grant_ranges import RequestRanges, request_ranges
from hybridxfer.plan._plan import PlanStatistics, TransferPlan
from hybridxfer.plan._prefix import CachedPrefix, CachedTokens
from hybridxfer.plan._sources import natural_sources
from hybridxfer.plan._stream import LayerGroup, Readiness, StreamSchedule, StreamStep, stream_schedule
from hybridxfer.plan._template import Job, PlanTemplate, compile_plan

__all__ = [
    "CachedPrefix",
    "CachedTokens",
    "Descriptors",
    "Job",
    "LayerGroup",
    "PlanStatistics",
    "PlanTemplate",
    "Readiness",
    "RequestRanges",
    "StreamSchedule",
    "StreamStep",
    "TransferPlan",
    "bind",
    "compile_plan",
    "contiguous_block_tables",
    "natural_sources",
    "request_ranges",
    "stream_schedule",
]

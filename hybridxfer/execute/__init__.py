"""Execution: the per-rank :class:`Agent` and the plans it runs."""

from __future__ import annotations

from hybridxfer.execute._agent import Agent, CompletedRequest, Peer
from hybridxfer.execute._completions import Completions
from hybridxfer.execute._executable import ExecutablePlan, TransferResult
from hybridxfer.execute._grants import RequestGrant
from hybridxfer.execute._info import AgentInfo, LayoutLike
from hybridxfer.execute._landed import LandedBytes, LandedTransport
from hybridxfer.execute._memory import RawMemory
from hybridxfer.execute._progress import CountingTransport, ProgressCallback, TransferProgress
from hybridxfer.execute._stats import AgentStatistics
from hybridxfer.execute._stream import StreamedTransfer

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentStatistics",
    "CompletedRequest",
    "Completions",
    "CountingTransport",
    "ExecutablePlan",
    "LandedBytes",
    "LandedTransport",
    "LayoutLike",
    "Peer",
    "ProgressCallback",
    "RawMemory",
    "RequestGrant",
    "StreamedTransfer",
    "TransferProgress",
    "TransferResult",
]

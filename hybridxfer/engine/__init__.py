"""The engine adapter: what an inference engine's KV connector calls.

An engine does not want to think about plans, descriptors or TP source ranks. It wants,
on a prefill (P) worker: *here are my cache tensors for this layout; tell me when a
decoder has finished reading a request so I can free its blocks* — and on a decode (D)
worker: *pull this request's blocks from that prefill engine, and tell me, per request,
whether the blocks I gave you are valid*. :class:`PrefillConnector` and
:class:`DecodeConnector` say exactly that, on top of :class:`hybridxfer.execute.Agent`.

See ``docs/engine-integration.md`` for a toy engine loop that the tests run.
"""

from __future__ import annotations

from hybridxfer.engine._caches import CacheMemory, cache_nbytes
from hybridxfer.engine._decode import DecodeConnector, DecodeStatistics, MetadataSource, PullResult
from hybridxfer.engine._failures import FailedRequest, FailurePolicy, FailureReason, RequestFailed
from hybridxfer.engine._prefill import FinishedRequest, PrefillConnector, PrefillStatistics, decode_consumers
from hybridxfer.engine._stream import STREAM_THRESHOLD_TOKENS, StreamedPull

__all__ = [
    "CacheMemory",
    "DecodeConnector",
    "DecodeStatistics",
    "FailedRequest",
    "FailurePolicy",
    "FailureReason",
    "FinishedRequest",
    "MetadataSource",
    "PrefillConnector",
    "PrefillStatistics",
    "PullResult",
    "RequestFailed",
    "STREAM_THRESHOLD_TOKENS",
    "StreamedPull",
    "cache_nbytes",
    "decode_consumers",
]

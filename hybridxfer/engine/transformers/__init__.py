"""Hugging Face transformers as an engine: move a real model's ``DynamicCache`` between processes.

Install with ``pip install 'hybridxfer[transformers]'`` (transformers 5.20). On the prefill
side, :func:`cache_layout` derives the layout from the model's config (the rules of
``hybridxfer layout from-hf --engine transformers``), :func:`prefill` fills a cache and
:func:`cache_regions` hands its live tensors to a
:class:`~hybridxfer.engine.PrefillConnector`. On the decode side,
:func:`allocate_regions` makes the shard a TP rank holds, a
:class:`~hybridxfer.engine.DecodeConnector` pulls into it, and :func:`build_cache` turns
whole tensors back into a ``DynamicCache`` that :func:`greedy_continue` decodes from.
transformers runs a model on one device, so TP ranks are emulated: :func:`shard_regions`
cuts what TP rank ``r`` would hold, :func:`gather_regions` puts ranks back together.

See ``docs/engine-integration.md`` for a complete run.
"""

from __future__ import annotations

from hybridxfer.engine.transformers._cache import allocate_regions, build_cache, cache_regions
from hybridxfer.engine.transformers._generate import cache_argument, greedy_continue, prefill
from hybridxfer.engine.transformers._layout import (
    RegionTensor,
    block_tables,
    cache_layout,
    rank_layout,
    region_tensors,
)
from hybridxfer.engine.transformers._shards import gather_regions, shard_regions
from hybridxfer.engine.transformers._tiny import TINY_FAMILIES, tiny_model, weights_digest

__all__ = [
    "RegionTensor",
    "TINY_FAMILIES",
    "allocate_regions",
    "block_tables",
    "build_cache",
    "cache_argument",
    "cache_layout",
    "cache_regions",
    "gather_regions",
    "greedy_continue",
    "prefill",
    "rank_layout",
    "region_tensors",
    "shard_regions",
    "tiny_model",
    "weights_digest",
]

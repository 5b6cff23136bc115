"""A live ``DynamicCache`` as layout regions (P), and regions back to a cache (D).

Why check every tensor on P: the layout comes from the config, the tensors from the
model's forward pass. If they disagree (another transformers version arranging a cache
differently, a model run in another dtype) a transfer would move the wrong bytes
silently; here it is one :class:`~hybridxfer.errors.LayoutError` naming every region.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from hybridxfer.engine.transformers._layout import RegionTensor, region_tensors
from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout import RankLayout

__all__ = ["allocate_regions", "build_cache", "cache_regions"]


def _live_tensor(cache: DynamicCache, region: RegionTensor) -> torch.Tensor | None:
    if region.layer >= len(cache.layers):
        return None
    layer: Any = cache.layers[region.layer]  # a full-attention, linear-attention or hybrid layer
    if region.piece in ("k", "v"):
        if not getattr(layer, "is_initialized", False):
            return None
        tensor = layer.keys if region.piece == "k" else layer.values
    else:
        states = getattr(layer, "conv_states" if region.piece == "conv" else "recurrent_states", None)
        tensor = states.get(0) if isinstance(states, dict) else None
    return tensor if isinstance(tensor, torch.Tensor) else None


def cache_regions(cache: DynamicCache, layout: RankLayout) -> dict[str, torch.Tensor]:
    """P side: the cache's own tensors, one per region of ``layout`` (no copy).

    ``cache`` is what this rank holds after prefilling one request (the layout's token
    count). Register the result with ``PrefillConnector.register_caches``; keep the cache
    alive and unchanged until the request is finished. Raises :class:`LayoutError`
    listing every region whose tensor is missing, not contiguous, or of another shape
    or dtype.
    """
    problems: list[LayoutProblem] = []
    out: dict[str, torch.Tensor] = {}
    for region in region_tensors(layout):
        tensor = _live_tensor(cache, region)
        path = f"caches.{region.region}"
        if tensor is None:
            problems.append(LayoutProblem(f"cache layer {region.layer} holds no {region.piece!r} tensor", path=path))
            continue
        have_dtype = str(tensor.dtype).removeprefix("torch.")
        if tuple(tensor.shape) != region.shape or have_dtype != region.dtype:
            problems.append(LayoutProblem(
                f"cache layer {region.layer} {region.piece!r} is {tuple(tensor.shape)} {have_dtype}; the layout "
                f"says {region.shape} {region.dtype} (TP {layout.tp}, rank {layout.rank})", path=path))
            continue
        if not tensor.is_contiguous():
            problems.append(LayoutProblem(f"cache layer {region.layer} {region.piece!r} is not contiguous", path=path))
            continue
        out[region.region] = tensor
    if problems:
        raise LayoutError(problems)
    return out


def allocate_regions(layout: RankLayout, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """D side: zeroed tensors of the shard this rank holds, one per region of ``layout``."""
    return {r.region: torch.zeros(r.shape, dtype=getattr(torch, r.dtype), device=device)
            for r in region_tensors(layout)}


def build_cache(model: PreTrainedModel | PretrainedConfig, layout: RankLayout,
                tensors: Mapping[str, torch.Tensor]) -> DynamicCache:
    """A ``DynamicCache`` holding ``tensors`` (whole, TP-1 regions), ready to decode from.

    The cache copies the tensors (``DynamicCache`` owns its storage), so the regions may
    be reused afterwards. Raises :class:`LayoutError` when ``layout`` is not a TP-1
    layout or a region's tensor is missing or misshapen.
    """
    if layout.tp != 1:
        raise LayoutError([LayoutProblem(
            f"a transformers model decodes from whole tensors; gather the TP-{layout.tp} shards first "
            "(gather_regions)", file=layout.layout.source)])
    regions = region_tensors(layout)
    problems = [LayoutProblem(f"no tensor of shape {r.shape}", path=f"tensors.{r.region}") for r in regions
                if r.region not in tensors or tuple(tensors[r.region].shape) != r.shape]
    if problems:
        raise LayoutError(problems)
    config = model.config if isinstance(model, PreTrainedModel) else model
    cache = DynamicCache(config=config)
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for r in regions:
        by_layer.setdefault(r.layer, {})[r.piece] = tensors[r.region]
    for index, pieces in sorted(by_layer.items()):
        layer: Any = cache.layers[index]
        if "k" in pieces:
            layer.update(pieces["k"], pieces["v"])
        if "conv" in pieces:
            conv = pieces["conv"]
            layer.update_conv_state(conv, conv_kernel_size=conv.shape[-1])
        if "ssm" in pieces:
            layer.update_recurrent_state(pieces["ssm"])
    return cache

"""``hybridxfer.engine.transformers`` refuses what would move wrong bytes, each with a clear error."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, PreTrainedModel

from hybridxfer.cli._demo_transformers import FAMILIES
from hybridxfer.engine.transformers import (
    TINY_FAMILIES,
    allocate_regions,
    build_cache,
    cache_layout,
    cache_regions,
    gather_regions,
    greedy_continue,
    prefill,
    rank_layout,
    region_tensors,
    shard_regions,
    tiny_model,
    weights_digest,
)
from hybridxfer.errors import LayoutError
from hybridxfer.layout import Layout

TOKENS = 12


Prefilled = tuple[PreTrainedModel, Layout, DynamicCache]


@pytest.fixture(scope="module")
def prefilled() -> Prefilled:
    model = tiny_model("zamba2")
    cache, _ = prefill(model, torch.arange(5, 5 + TOKENS).reshape(1, TOKENS))
    return model, cache_layout(model), cache


def test_demo_families_are_the_tiny_families() -> None:
    assert FAMILIES == TINY_FAMILIES


def test_same_seed_same_weights() -> None:
    assert weights_digest(tiny_model("mamba")) == weights_digest(tiny_model("mamba"))
    assert weights_digest(tiny_model("mamba")) != weights_digest(tiny_model("mamba", seed=1))


def test_cache_regions_names_every_mismatch(prefilled: Prefilled) -> None:
    """A cache of another length (or dtype) than the layout says: every region is named."""
    _, layout, cache = prefilled
    with pytest.raises(LayoutError) as info:
        cache_regions(cache, rank_layout(layout, TOKENS + 1))
    text = str(info.value)
    assert "caches.layers.1.attention.k: cache layer 1 'k' is (1, 4, 12, 32) float32; the layout says " \
           "(1, 4, 13, 32) float32" in text
    assert "layers.3.attention.v" in text and "conv" not in text  # state is as long for any prompt


def test_cache_regions_refuses_a_shard_layout_for_a_whole_cache(prefilled: Prefilled) -> None:
    _, layout, cache = prefilled
    with pytest.raises(LayoutError, match=r"is \(1, 192, 4\) float32; the layout says \(1, 96, 4\)"):
        cache_regions(cache, rank_layout(layout, TOKENS, tp=2, rank=1))


def test_build_cache_wants_whole_tensors(prefilled: Prefilled) -> None:
    model, layout, _ = prefilled
    shard = rank_layout(layout, TOKENS, tp=2)
    with pytest.raises(LayoutError, match="gather the TP-2 shards first"):
        build_cache(model, shard, allocate_regions(shard))


def test_gather_refuses_replicas_that_differ(prefilled: Prefilled) -> None:
    """At TP 4 the two B/C groups are shared by two ranks each; a replica that differs is an error."""
    _, layout, cache = prefilled
    whole = cache_regions(cache, rank_layout(layout, TOKENS))
    shards = [shard_regions(layout, whole, TOKENS, tp=4, rank=r) for r in range(4)]
    gathered = gather_regions(layout, shards, TOKENS)
    assert all(torch.equal(gathered[k], whole[k]) for k in whole)
    shards[3]["layers.0.conv"][0, -1, 0] += 1  # rank 3's copy of group 1 of C
    with pytest.raises(LayoutError, match=r"shards\[3\]\.layers\.0\.conv: TP rank 3 holds a replica"):
        gather_regions(layout, shards, TOKENS)


def test_geometry_that_does_not_shard_is_refused() -> None:
    """Qwen3Next's 4 key heads cannot spread over 8 ranks (gated delta nets do not replicate)."""
    layout = cache_layout(tiny_model("qwen3_next"))
    with pytest.raises(LayoutError, match="TP=8: q: 4 units cannot be split over TP=8"):
        rank_layout(layout, TOKENS, tp=8)
    with pytest.raises(LayoutError, match="at least one token"):
        rank_layout(layout, 0)


def test_round_trip_in_one_process_decodes_identically(prefilled: Prefilled) -> None:
    """Whole tensors back into a fresh cache: the continuation equals the original cache's."""
    model, layout, cache = prefilled
    one = rank_layout(layout, TOKENS)
    tensors = {k: v.clone() for k, v in cache_regions(cache, one).items()}
    assert [r.region for r in region_tensors(one)] == list(tensors)
    fresh = build_cache(model, one, tensors)
    tokens_a, logits_a = greedy_continue(model, fresh, 7, TOKENS, 4)
    tokens_b, logits_b = greedy_continue(model, cache, 7, TOKENS, 4)
    assert tokens_a == tokens_b and torch.equal(logits_a, logits_b)

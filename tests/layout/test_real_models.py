"""The layouts in ``layouts/`` hold exactly the bytes vLLM 0.33 holds for each real model.

Every expected number is read from ``tests/data/hybrid-models.json`` at test time (never
copied into this file), so a wrong dimension in a layout file, or a wrong rule in the layout
model, shows up as a byte count that differs from the independently derived reference
(``tests/data/README.md`` says where those numbers come from).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from hybridxfer.layout import Layout, PlacedPiece, RankLayout, load_layout

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "layouts"

TPS = (1, 2, 4, 8)
#: Model-file stems: every ``layouts/*.toml`` is named after a model id in the JSON.
MODEL_FILES = sorted(p.stem for p in LAYOUTS_DIR.glob("*.toml"))
ALL_FILES = sorted(LAYOUTS_DIR.rglob("*.toml"))
TOKEN_KINDS = {"attention", "sliding_window", "mla"}
#: Layout kind -> the key the JSON's ``layer_pattern.indices`` uses for it.
INDEX_KEY = {"attention": "attention", "sliding_window": "attention", "mla": "attention",
             "mamba2": "mamba", "mamba1": "mamba1", "gdn": "gdn"}
#: JSON state-section key per state kind, and the JSON name of the second state tensor.
STATE_SECTION = {"mamba2": ("mamba2", "ssm_state"), "mamba1": ("mamba1", "ssm_state"),
                 "gdn": ("gdn", "recurrent_state")}


def _layer_index(name: str) -> int:
    m = re.fullmatch(r"layers\.(\d+)(?:\.\w+)?", name)
    assert m, f"layer name {name!r} does not follow layers.{{i}}[.spec]"
    return int(m.group(1))


def _per_layer(rank: RankLayout) -> dict[str, list[PlacedPiece]]:
    out: dict[str, list[PlacedPiece]] = defaultdict(list)
    for p in rank.placements:
        out[p.layer].append(p)
    return out


def _hma(entry: dict[str, Any], tp: int) -> dict[str, Any]:
    per_tp: dict[str, Any] = entry["vllm_hma_page_equalisation"]["per_tp"]
    assert str(tp) in per_tp, f"{entry['id']}: JSON has no TP={tp} entry"
    return dict(per_tp[str(tp)])


@pytest.fixture(scope="module")
def layouts() -> dict[str, Layout]:
    return {stem: load_layout(LAYOUTS_DIR / f"{stem}.toml") for stem in MODEL_FILES}


def test_every_json_model_has_a_layout_file(hybrid_models: dict[str, Any]) -> None:
    assert MODEL_FILES == sorted(hybrid_models), "layouts/*.toml must be exactly the models in the JSON"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(LAYOUTS_DIR)))
def test_layout_file_checks(path: Path) -> None:
    """What ``hybridxfer layout check`` does: load, validate, resolve at TP 1."""
    layout = load_layout(path)
    assert layout.problems() == []
    rank = layout.for_rank(1, 0, num_blocks=2)
    assert rank.total_bytes > 0


@pytest.mark.parametrize("model_id", MODEL_FILES)
def test_model_digest_and_id(model_id: str, layouts: dict[str, Layout], hybrid_models: dict[str, Any]) -> None:
    layout = layouts[model_id]
    assert layout.model == model_id
    counts = hybrid_models[model_id]["layer_pattern"]
    assert len({_layer_index(lay.name) for lay in layout.layers}) <= counts["num_hidden_layers"]


@pytest.mark.parametrize("model_id", MODEL_FILES)
def test_layer_indices_by_kind(model_id: str, layouts: dict[str, Layout], hybrid_models: dict[str, Any]) -> None:
    layout = layouts[model_id]
    specs = layout.spec_map()
    got: dict[str, list[int]] = defaultdict(list)
    for lay in layout.layers:
        got[INDEX_KEY[specs[lay.spec].kind_name]].append(_layer_index(lay.name))
    indices = hybrid_models[model_id]["layer_pattern"]["indices"]
    expected = {k: v for k, v in indices.items() if k in set(INDEX_KEY.values())}
    assert dict(got) == expected


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("model_id", MODEL_FILES)
def test_rank_bytes_match_reference(
    model_id: str, tp: int, layouts: dict[str, Layout], hybrid_models: dict[str, Any]
) -> None:
    entry = hybrid_models[model_id]
    hma = _hma(entry, tp)
    layout = layouts[model_id]
    if not hma["valid_in_vllm"]:
        with pytest.raises(Exception):
            layout.for_rank(tp, 0)
        return
    specs = layout.spec_map()
    kinds = {lay.name: specs[lay.spec].kind_name for lay in layout.layers}
    for rank_id in sorted({0, tp - 1}):
        rank = layout.for_rank(tp, rank_id, num_blocks=3)
        by_layer = _per_layer(rank)
        attn = {lay: ps for lay, ps in by_layer.items() if kinds[lay] in TOKEN_KINDS}
        state = {lay: ps for lay, ps in by_layer.items() if kinds[lay] not in TOKEN_KINDS}

        # attention: bytes per token per layer and KV heads per rank
        per_token = {sum(p.piece.nbytes for p in ps) // rank.kernel_block_tokens for ps in attn.values()}
        assert per_token == ({hma["attn_page_bytes_per_token_per_layer"]} if attn else set())
        heads = {p.piece.extent("head") if "head" in p.piece.axes else 1
                 for ps in attn.values() for p in ps}
        assert heads == ({hma["attn_num_kv_heads_per_rank"]} if attn else set())

        # state: one page per sequence per layer
        state_bytes = {sum(p.piece.nbytes for p in ps) for ps in state.values()}
        assert state_bytes == ({hma["state_page_bytes_per_layer"]} if state else set())

        block = hma["attention_block_size_tokens"]
        if block is not None:
            assert rank.logical_block_tokens == block
        if attn and state:
            # hybrid: every region's page = attention page = padded state page
            assert set(rank.region_page_bytes) == {hma["attention_page_bytes_per_layer"]}
            assert hma["state_page_padded_bytes"] == hma["attention_page_bytes_per_layer"]
            assert hma["attention_page_bytes_per_layer"] - min(state_bytes) == hma["state_padding_bytes"]
            assert sum(rank.region_page_bytes) == hma["kv_cache_groups"]["bytes_per_block_id"]
        elif state:
            assert set(rank.region_page_bytes) == {hma["state_page_bytes_per_layer"]}
        else:
            assert set(rank.region_page_bytes) == {block * hma["attn_page_bytes_per_token_per_layer"]}


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("model_id", MODEL_FILES)
def test_state_shapes_match_reference(
    model_id: str, tp: int, layouts: dict[str, Layout], hybrid_models: dict[str, Any]
) -> None:
    """Conv and SSM piece shapes per rank equal vLLM's (JSON shapes are SD; DS is the transpose)."""
    entry = hybrid_models[model_id]
    layout = layouts[model_id]
    specs = layout.spec_map()
    state_specs = {s.kind_name for s in specs.values() if s.kind_name in STATE_SECTION}
    if not state_specs:
        assert not set(entry) & {section for section, _ in STATE_SECTION.values()}
        return
    (kind,) = state_specs
    section, second = STATE_SECTION[kind]
    ref = entry[section]["tp_sharding"]["per_tp"][str(tp)]
    assert ref["valid_in_vllm"]
    rank = layout.for_rank(tp, tp - 1, num_blocks=1)
    layer = next(lay.name for lay in layout.layers if specs[lay.spec].kind_name == kind)
    conv = rank.placement(layer, "conv").piece
    ssm = rank.placement(layer, "ssm").piece
    assert (conv.extent("row"), conv.extent("channel")) == tuple(ref["shapes"]["conv_state"])
    assert ssm.extents == tuple(ref["shapes"][second])
    assert conv.nbytes + ssm.nbytes == ref["bytes_per_layer"]
    dtypes = entry[section]["state_dtypes"]
    assert (conv.dtype, ssm.dtype) == (dtypes["conv"], dtypes["ssm_or_recurrent"])


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("model_id", MODEL_FILES)
def test_group_structure_matches_reference(
    model_id: str, tp: int, layouts: dict[str, Layout], hybrid_models: dict[str, Any]
) -> None:
    hma = _hma(hybrid_models[model_id], tp)
    layout = layouts[model_id]
    if "kv_cache_groups" not in hma:
        # not hybrid: one group per spec, one region per layer
        assert len(layout.groups) == len(layout.specs)
        assert len(layout.regions) == len(layout.layers)
        return
    ref = hma["kv_cache_groups"]
    specs = layout.spec_map()
    kinds = {lay.name: specs[lay.spec].kind_name for lay in layout.layers}
    size = max(len(g.layers) for g in layout.groups)
    attn_groups = [g for g in layout.groups if kinds[g.layers[0]] in TOKEN_KINDS]
    state_groups = [g for g in layout.groups if kinds[g.layers[0]] not in TOKEN_KINDS]
    assert size == ref["group_size_layers"]
    assert len(attn_groups) == ref["attention_groups"]
    assert len(state_groups) == ref["state_groups"]
    assert sum(size - len(g.layers) for g in layout.groups) == ref["padding_layers"]
    assert len(layout.regions) == size


def test_attention_tp1_totals(layouts: dict[str, Layout], hybrid_models: dict[str, Any]) -> None:
    """Whole-model KV bytes per token at TP 1 (sum over attention layers)."""
    checked = 0
    for model_id, layout in layouts.items():
        entry = hybrid_models[model_id]
        section = entry.get("attention") or entry.get("mla")
        if section is None:
            continue
        total_key = next(k for k in section if k.startswith("kv_bytes_per_token_all"))
        rank = layout.for_rank(1, 0, num_blocks=1)
        total = sum(p.piece.nbytes for p in rank.placements if p.kind in TOKEN_KINDS)
        assert total // rank.kernel_block_tokens == section[total_key]["value"], model_id
        assert total // rank.kernel_block_tokens // len(
            [lay for lay in layout.layers if layout.layer_spec(lay.name).kind_name in TOKEN_KINDS]
        ) == section["kv_bytes_per_token_per_layer_tp1"]["value"]
        checked += 1
    assert checked == 8


def test_qwen3_next_vllm_033_hopper_default_alignment(
    layouts: dict[str, Layout], hybrid_models: dict[str, Any]
) -> None:
    """With A = 64 (FlashInfer GDN prefill checkpoints), block sizes follow the JSON's second table."""
    import attrs

    layout = layouts["qwen3-next-80b-a3b"]
    aligned = attrs.evolve(layout, block=attrs.evolve(layout.block, align=64))
    table = hybrid_models["qwen3-next-80b-a3b"]["vllm_hma_page_equalisation"]["vllm_0_33_default_on_hopper_gdn"]
    for tp in TPS:
        ref = table["per_tp"][str(tp)]
        rank = aligned.for_rank(tp, 0, num_blocks=1)
        assert rank.logical_block_tokens == ref["attention_block_size_tokens"]
        assert set(rank.region_page_bytes) == {ref["attention_page_bytes_per_layer"]}

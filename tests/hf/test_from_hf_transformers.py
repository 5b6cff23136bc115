"""The importer's second engine: Hugging Face transformers' ``DynamicCache``, from the same rules.

For each tiny model of the ten families, the layout ``layout from-hf --engine
transformers`` prints for its ``config.json`` is the one ``cache_layout(model)`` derives,
and it sizes every tensor of a real prefilled cache exactly (``cache_regions`` checks each
shape and dtype). The families the importer gained (Bamba, Zamba2, configs as transformers
5 writes them) derive for vLLM too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hybridxfer.cli._from_hf import main_from_hf
from hybridxfer.engine.transformers import (
    TINY_FAMILIES,
    cache_layout,
    cache_regions,
    prefill,
    rank_layout,
    region_tensors,
    tiny_model,
)
from hybridxfer.hf import ENGINES, UnsupportedModelError, layout_from_hf_config
from hybridxfer.layout import AttentionSpec, GdnSpec, Mamba1Spec, Mamba2Spec, load_layout, loads_layout

CONFIGS = Path(__file__).resolve().parent / "configs"


def _config(model_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{model_id}.json").read_text(encoding="utf-8"))
    return data


def test_engines() -> None:
    assert ENGINES == ("vllm", "transformers")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cli_layout_is_the_engines_and_fits_a_real_cache(family: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model(family)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    assert main_from_hf([str(path), "--engine", "transformers", "--model-id", family]) == 0
    printed = loads_layout(capsys.readouterr().out)
    derived = cache_layout(model)
    assert printed == derived
    tokens = 9
    cache, _ = prefill(model, torch.arange(3, 3 + tokens).reshape(1, tokens))
    live = cache_regions(cache, rank_layout(derived, tokens))  # every shape and dtype checked
    assert set(live) == set(rank_layout(derived, tokens).region_names)


def test_nemotron_h_regions_keep_layer_indices() -> None:
    """MLP and MoE layers hold no cache but keep their index: regions are named after cache layers."""
    layout = cache_layout(tiny_model("nemotron_h"))  # pattern M-M*E-
    names = [r.name for r in layout.regions]
    assert names == ["layers.0.conv", "layers.0.ssm", "layers.2.conv", "layers.2.ssm", "layers.3.k", "layers.3.v"]
    assert [g.name for g in layout.groups] == ["attention", "mamba"]


def test_transformers_arrangement() -> None:
    """K and V apart, head-major; conv channel-major with all conv_kernel columns; the
    recurrent state float32 (and key-major for gated delta nets) in a bfloat16 model."""
    config = _config("qwen3-next-80b-a3b")
    layout = loads_layout(layout_from_hf_config(config, engine="transformers", model_id="q"))
    specs = dict(layout.specs)
    attention, gdn = specs["attention"], specs["gdn"]
    assert isinstance(attention, AttentionSpec) and isinstance(gdn, GdnSpec)
    assert (attention.kv, attention.order, attention.dtype) == ("separate", "HND", "bfloat16")
    assert (gdn.conv_layout, gdn.conv_rows, gdn.conv_kernel, gdn.state_order) == ("DS", 4, 4, "kv")
    assert (gdn.conv_dtype, gdn.ssm_dtype) == ("bfloat16", "float32")
    conv = layout.for_rank(1, num_blocks=1, logical_block_tokens=7).placement("layers.0", "conv").piece
    assert conv.axes == ("channel", "row") and conv.extent("row") == 4
    assert conv.start("row") == -1  # one row older than vLLM's conv_kernel - 1: the newest rows line up
    mamba = loads_layout(layout_from_hf_config(_config("mamba-2.8b"), engine="transformers", model_id="m"))
    spec = dict(mamba.specs)["mamba"]
    assert isinstance(spec, Mamba1Spec) and (spec.conv_layout, spec.conv_rows) == ("DS", spec.conv_kernel)


def test_transformers_keeps_a_float32_config_in_float32() -> None:
    config = dict(_config("mamba2-2.7b"), torch_dtype="float32")
    spec = dict(loads_layout(layout_from_hf_config(config, engine="transformers", model_id="m")).specs)["mamba"]
    assert isinstance(spec, Mamba2Spec) and spec.conv_dtype == "float32"
    vllm = dict(loads_layout(layout_from_hf_config(config, model_id="m")).specs)["mamba"]
    assert isinstance(vllm, Mamba2Spec) and vllm.conv_dtype == "bfloat16"


@pytest.mark.parametrize(("model_id", "match"), [
    ("deepseek-v2-lite", "caches MLA models as full per-head K/V"),
])
def test_transformers_engine_refuses_what_it_has_no_rule_for(model_id: str, match: str) -> None:
    with pytest.raises(UnsupportedModelError, match=match):
        layout_from_hf_config(_config(model_id), engine="transformers")


def test_transformers_engine_refuses_sliding_windows() -> None:
    config = {"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 16}
    with pytest.raises(UnsupportedModelError, match="only the last sliding_window tokens"):
        layout_from_hf_config(config, engine="transformers")
    assert layout_from_hf_config(config).count("sliding_window") >= 1  # vLLM has a rule for it


def test_nemotron_h_layers_block_type_equals_the_pattern() -> None:
    """transformers 5 writes NemotronH's pattern as layers_block_type; both give one layout."""
    config = _config("nemotron-h-8b")
    letters = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    renamed = {k: v for k, v in config.items() if k != "hybrid_override_pattern"}
    renamed["layers_block_type"] = [letters[c] for c in config["hybrid_override_pattern"]]
    assert loads_layout(layout_from_hf_config(renamed, model_id="x")) == \
        loads_layout(layout_from_hf_config(config, model_id="x"))


def test_bamba_and_zamba2_for_vllm() -> None:
    bamba = {"architectures": ["BambaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 4,
             "num_attention_heads": 32, "num_key_value_heads": 8, "attn_layer_indices": [2], "mamba_n_heads": 128,
             "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2,
             "torch_dtype": "bfloat16"}
    layout = loads_layout(layout_from_hf_config(bamba))
    assert [lay.spec for lay in layout.layers] == ["mamba", "mamba", "attention", "mamba"]
    mamba = dict(layout.specs)["mamba"]
    assert isinstance(mamba, Mamba2Spec) and (mamba.num_heads, mamba.head_dim, mamba.n_groups) == (128, 64, 1)
    zamba = {"architectures": ["Zamba2ForCausalLM"], "hidden_size": 2560, "num_hidden_layers": 3,
             "layers_block_type": ["mamba", "hybrid", "mamba"], "num_attention_heads": 32,
             "num_key_value_heads": 8, "attention_head_dim": 160, "n_mamba_heads": 80, "mamba_headdim": 64,
             "mamba_ngroups": 1, "mamba_d_state": 64, "mamba_d_conv": 4, "mamba_expand": 2}
    vllm = loads_layout(layout_from_hf_config(zamba))
    assert [lay.name for lay in vllm.layers] == ["layers.0", "layers.1.attention", "layers.1.mamba", "layers.2"]
    attention = dict(vllm.specs)["attention"]
    assert isinstance(attention, AttentionSpec)
    assert (attention.num_kv_heads, attention.head_dim) == (32, 160)  # vLLM's Zamba2 attention has no GQA
    hf = dict(loads_layout(layout_from_hf_config(zamba, engine="transformers")).specs)["attention"]
    assert isinstance(hf, AttentionSpec) and hf.num_kv_heads == 8  # transformers reads num_key_value_heads


def test_vllm_layouts_unchanged_by_the_second_engine() -> None:
    """The shipped layouts still come out of the vLLM rules exactly (see test_from_hf too)."""
    root = Path(__file__).resolve().parents[2]
    for model_id in ("nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "jamba-v0.1"):
        assert loads_layout(layout_from_hf_config(_config(model_id), model_id=model_id)) == \
            load_layout(root / "layouts" / f"{model_id}.toml")


def test_region_tensors_name_cache_layers() -> None:
    layout = rank_layout(cache_layout(tiny_model("falcon_h1")), 5)
    assert [(r.region, r.layer, r.piece, r.shape) for r in region_tensors(layout)][:4] == [
        ("layers.0.attention.k", 0, "k", (1, 2, 5, 16)), ("layers.0.attention.v", 0, "v", (1, 2, 5, 16)),
        ("layers.0.mamba.conv", 0, "conv", (1, 192, 4)), ("layers.0.mamba.ssm", 0, "ssm", (1, 8, 16, 16))]

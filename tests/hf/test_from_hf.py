"""The HF importer derives, for each real model's config, exactly the hand-written layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hybridxfer.errors import HybridXferError
from hybridxfer.hf import (
    SUPPORTED_ARCHITECTURES,
    UnsupportedModelError,
    layout_from_hf_config,
    write_layout_from_hf,
)
from hybridxfer.cli._from_hf import main_from_hf
from hybridxfer.layout import load_layout, loads_layout

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs"
MODEL_IDS = sorted(p.stem for p in CONFIGS.glob("*.json"))


def _config(model_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{model_id}.json").read_text(encoding="utf-8"))
    return data


def test_a_config_for_every_layout_file() -> None:
    assert MODEL_IDS == sorted(p.stem for p in (ROOT / "layouts").glob("*.toml"))


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_generated_layout_equals_hand_written(model_id: str) -> None:
    text = layout_from_hf_config(_config(model_id), model_id=model_id)
    generated = loads_layout(text, source=f"<from-hf {model_id}>")
    hand = load_layout(ROOT / "layouts" / f"{model_id}.toml")
    assert generated.model_digest == hand.model_digest
    assert generated.digest == hand.digest
    assert generated == hand


def test_unknown_architecture_lists_supported() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        layout_from_hf_config({"architectures": ["GPT2LMHeadModel"]})
    assert isinstance(info.value, HybridXferError)
    msg = str(info.value)
    assert msg.startswith("unsupported architecture GPT2LMHeadModel (supported architectures: ")
    for arch in ("NemotronHForCausalLM", "JambaForCausalLM", "FalconH1ForCausalLM", "GraniteMoeHybridForCausalLM",
                 "Qwen3NextForCausalLM", "Mamba2ForCausalLM", "MambaForCausalLM", "LlamaForCausalLM",
                 "DeepseekV2ForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        assert arch in SUPPORTED_ARCHITECTURES
        assert arch in msg
    assert info.value.supported == SUPPORTED_ARCHITECTURES


@pytest.mark.parametrize("config", [{}, {"architectures": "LlamaForCausalLM"}, {"architectures": []}])
def test_missing_architectures(config: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModelError, match="config.json has no 'architectures' list"):
        layout_from_hf_config(config)


def test_missing_field_is_named() -> None:
    config = _config("jamba-v0.1")
    del config["mamba_d_state"]
    with pytest.raises(UnsupportedModelError, match=r"^JambaForCausalLM: config.json has no 'mamba_d_state'$"):
        layout_from_hf_config(config)


def test_unknown_engine() -> None:
    with pytest.raises(UnsupportedModelError, match="unsupported engine 'sglang'"):
        layout_from_hf_config(_config("llama-3.1-8b"), engine="sglang")


def test_nemotron_ssm_dtype_defaults_to_float32() -> None:
    """vLLM NemotronHForCausalLMConfig: mamba_ssm_cache_dtype 'auto' -> float32 when the config is silent."""
    config = _config("nemotron-3-nano-30b-a3b")
    del config["mamba_ssm_cache_dtype"]
    layout = loads_layout(layout_from_hf_config(config, model_id="x"))
    assert dict(layout.specs)["mamba"].ssm_dtype == "float32"  # type: ignore[union-attr]


def test_nemotron_uses_heads_times_head_dim_not_expand() -> None:
    layout = loads_layout(layout_from_hf_config(_config("nemotron-3-nano-30b-a3b"), model_id="x"))
    rank = layout.for_rank(1)
    conv = rank.placement("layers.0", "conv").piece
    assert conv.extent("channel") == 64 * 64 + 2 * 8 * 128  # not expand * hidden = 5376 + groups


def test_qwen35_ssm_dtype_and_layer_types() -> None:
    config = _config("qwen3-next-80b-a3b")
    config["architectures"] = ["Qwen3_5ForCausalLM"]
    config["mamba_ssm_dtype"] = "float32"
    del config["full_attention_interval"]
    config["layer_types"] = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 12
    layout = loads_layout(layout_from_hf_config(config, model_id="qwen3-next-80b-a3b"))
    hand = load_layout(ROOT / "layouts" / "qwen3-next-80b-a3b.toml")
    assert [lay.spec for lay in layout.layers] == [lay.spec for lay in hand.layers]
    assert dict(layout.specs)["gdn"].ssm_dtype == "float32"  # type: ignore[union-attr]


def test_float32_checkpoint_served_as_bfloat16() -> None:
    config = _config("mamba-2.8b")
    config["torch_dtype"] = "float32"
    layout = loads_layout(layout_from_hf_config(config, model_id="mamba-2.8b"))
    assert layout == load_layout(ROOT / "layouts" / "mamba-2.8b.toml")


def test_mistral_sliding_window_and_llama_like() -> None:
    config = {"architectures": ["MistralForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 4,
              "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": 4096, "torch_dtype": "bfloat16"}
    layout = loads_layout(layout_from_hf_config(config))
    assert layout.model == "mistralforcausallm"  # no _name_or_path, no model_type
    spec = dict(layout.specs)["attention"]
    assert (spec.kind_name, spec.sliding_window) == ("sliding_window", 4096)
    qwen2 = dict(config, architectures=["Qwen2ForCausalLM"], use_sliding_window=False, _name_or_path="Qwen/Qwen2-7B")
    layout = loads_layout(layout_from_hf_config(qwen2))
    assert layout.model == "qwen2-7b"
    assert dict(layout.specs)["attention"].kind_name == "attention"


def test_write_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "layout.toml"
    text = write_layout_from_hf(CONFIGS / "falcon-h1-7b.json", out, model_id="falcon-h1-7b")
    assert out.read_text(encoding="utf-8") == text
    assert main_from_hf([str(CONFIGS / "llama-3.1-8b.json"), "--model-id", "llama-3.1-8b"]) == 0
    printed = capsys.readouterr().out
    assert loads_layout(printed) == load_layout(ROOT / "layouts" / "llama-3.1-8b.toml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"architectures": ["BertModel"]}), encoding="utf-8")
    assert main_from_hf([str(bad)]) == 1
    assert capsys.readouterr().err.startswith("error: unsupported architecture BertModel (supported architectures: ")

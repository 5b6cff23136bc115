"""Seeded tiny models of every supported family, built from a config (nothing downloaded).

Why re-scale the weights: with transformers' default init (std 0.02) a wrong recurrent
state moves the logits by ~1e-5 and never changes a token, so a check would pass on
corrupted state. Weight matrices drawn with std = fan_in^-0.5 keep activations at unit
scale: one wrong state value then moves the logits visibly.

Every geometry below shards over TP 1, 2 and 4, and exercises replication at TP 4: two
KV heads (Llama, NemotronH, Bamba, GraniteMoeHybrid, FalconH1, Jamba, Qwen3Next), and
B/C groups below TP (two groups; Mamba2 has one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

__all__ = ["TINY_FAMILIES", "tiny_model", "weights_digest"]

_COMMON: dict[str, object] = {
    "vocab_size": 512, "hidden_size": 64, "tie_word_embeddings": False,
    # No end-of-sequence token: a greedy continuation always runs its full length.
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": None,
}
_ATTENTION: dict[str, object] = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
_MAMBA2: dict[str, object] = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 2, "mamba_d_state": 16,
                              "mamba_d_conv": 4, "mamba_expand": 2}

#: model_type -> the config fields of its tiny model (2-6 layers).
_CONFIGS: dict[str, Mapping[str, object]] = {
    "llama": {"num_hidden_layers": 2, **_ATTENTION},
    "nemotron_h": {
        "num_hidden_layers": 6, "hybrid_override_pattern": "M-M*E-", **_ATTENTION, "head_dim": 16,
        "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2, "ssm_state_size": 16, "conv_kernel": 4,
        "expand": 2, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 32, "n_group": 1, "topk_group": 1},
    "bamba": {"num_hidden_layers": 4, "attn_layer_indices": [1, 3], **_ATTENTION, **_MAMBA2},
    "granitemoehybrid": {
        "num_hidden_layers": 4, "layer_types": ["mamba", "attention", "mamba", "attention"], **_ATTENTION, **_MAMBA2,
        "num_local_experts": 4, "num_experts_per_tok": 2, "shared_intermediate_size": 64},
    "falcon_h1": {"num_hidden_layers": 2, **_ATTENTION, "head_dim": 16, **_MAMBA2, "mamba_d_ssm": 128},
    "zamba2": {
        "num_hidden_layers": 4, "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"],
        "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "mamba_ngroups": 2,
        "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "n_mamba_heads": 8, "num_mem_blocks": 1,
        "use_mem_rope": False},
    "mamba2": {"num_hidden_layers": 2, "num_heads": 8, "head_dim": 16, "n_groups": 1, "state_size": 16,
               "conv_kernel": 4, "expand": 2},
    "mamba": {"num_hidden_layers": 2, "state_size": 16, "conv_kernel": 4, "expand": 2, "intermediate_size": 128},
    "jamba": {
        "num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
        "expert_layer_offset": 1, "num_experts": 2, "num_experts_per_tok": 1, **_ATTENTION, "mamba_d_state": 16,
        "mamba_d_conv": 4, "mamba_expand": 2},
    "qwen3_next": {
        "num_hidden_layers": 4, "full_attention_interval": 2, **_ATTENTION, "head_dim": 16,
        "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 16,
        "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "decoder_sparse_step": 1},
}

#: The families, by Hugging Face ``model_type``.
TINY_FAMILIES: tuple[str, ...] = tuple(_CONFIGS)


def tiny_model(model_type: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A seeded, re-scaled tiny model of ``model_type`` in eval mode (same seed, same weights).

    Raises ``KeyError`` naming the known families for any other ``model_type``.
    """
    if model_type not in _CONFIGS:
        raise KeyError(f"no tiny model for {model_type!r} (known: {', '.join(TINY_FAMILIES)})")
    config = AutoConfig.for_model(model_type, **_COMMON, **_CONFIGS[model_type])
    torch.manual_seed(seed)
    model = cast(PreTrainedModel, AutoModelForCausalLM.from_config(config, dtype=dtype))  # type: ignore[no-untyped-call]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=generator) * fan_in ** -0.5)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.eval()  # type: ignore[no-untyped-call]
    return model


def weights_digest(model: PreTrainedModel) -> str:
    """A digest of every parameter's bytes: two processes hold the same model iff they agree."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]

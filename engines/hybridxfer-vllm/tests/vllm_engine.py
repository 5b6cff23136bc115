"""A tiny hybrid vLLM engine on CPU: configs, KV-cache configs and tensors as vLLM makes them.

Everything that decides memory is vLLM's own code: ``VllmConfig``, the CPU platform's
hybrid block-size alignment, the model class's Mamba state shapes, vLLM's KV-cache
grouping and planning (``get_kv_cache_configs``) and its allocator (``allocate_kv_cache``).
What stands in for the model is only the content: :func:`write_request` writes a request's
KV and SSM state where vLLM's semantics put them (token ``t`` of an attention layer in
block ``t // block_size``, slot ``t % block_size``, the KV heads of this TP rank; the
running Mamba state in the group's state block, conv channels ``[x_r | B_r | C_r]`` and
SSM heads of this rank), from a TP-independent logical state. The same function gives
the bytes a decode rank must hold, so checks never use the code under test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import numpy as np
import torch

#: Nemotron-H shaped, tiny: pattern M*M* = 2 Mamba2 + 2 attention layers -> one attention
#: group and one Mamba group over two shared tensors (vLLM's HMA).
CONFIG: dict[str, Any] = {
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
    "hybrid_override_pattern": "M*M*", "num_hidden_layers": 4, "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "mamba_num_heads": 4, "mamba_head_dim": 8, "n_groups": 2, "ssm_state_size": 8, "conv_kernel": 4,
    "expand": 1, "vocab_size": 256, "max_position_embeddings": 4096, "torch_dtype": "float16",
    "mamba_ssm_cache_dtype": "float32",
}
MAX_MODEL_LEN = 1024
#: bytes vLLM may use for the KV cache per worker
KV_MEMORY = 2 << 20


def write_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    return directory


def engine_config(model: Path, *, tp: int, engine_id: str, extra: Mapping[str, Any] | None = None,
                  block_size: int | None = None) -> Any:
    """A VllmConfig as ``vllm serve --kv-transfer-config ...`` builds it, block sizes aligned."""
    from vllm.config import (
        CacheConfig,
        DeviceConfig,
        KVTransferConfig,
        ModelConfig,
        ParallelConfig,
        SchedulerConfig,
        VllmConfig,
    )
    from vllm.config.vllm import set_current_vllm_config
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    model_config = ModelConfig(model=str(model), dtype="float16", skip_tokenizer_init=True,
                               max_model_len=MAX_MODEL_LEN)
    cache = CacheConfig(enable_prefix_caching=False) if block_size is None else \
        CacheConfig(enable_prefix_caching=False, block_size=block_size)
    config = VllmConfig(
        model_config=model_config,
        kv_transfer_config=KVTransferConfig(kv_connector="HybridXferConnector", kv_connector_module_path="hybridxfer_vllm",
                                            kv_role="kv_both", engine_id=engine_id,
                                            kv_connector_extra_config=dict(extra or {}),
                                            kv_load_failure_policy="recompute"),
        device_config=DeviceConfig("cpu"),
        parallel_config=ParallelConfig(tensor_parallel_size=tp),
        cache_config=cache,
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=MAX_MODEL_LEN,
                                         max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False,
                                         disable_hybrid_kv_cache_manager=False),
    )
    # What the CPU platform's update_block_size_for_backend does once the model's layers
    # exist: its attention layers use CPUAttentionBackend.
    with set_current_vllm_config(config):
        if not cache.user_specified_block_size:
            cache.block_size = current_platform._preferred_block_size_for_backends([CPUAttentionBackend], 128, config)
        current_platform._align_hybrid_block_size(config, CPUAttentionBackend)
    return config


def layer_names() -> list[tuple[str, str]]:
    """(vLLM layer name, kind) in model order, as nemotron_h names its cache layers."""
    out = []
    for i, c in enumerate(CONFIG["hybrid_override_pattern"]):
        if c == "M":
            out.append((f"model.layers.{i}.mixer", "mamba"))
        elif c == "*":
            out.append((f"model.layers.{i}.mixer.attn", "attention"))
    return out


def kv_cache_config(config: Any) -> Any:
    """The worker's KVCacheConfig, by vLLM's own grouping and planning."""
    from vllm.config.vllm import set_current_vllm_config
    from vllm.model_executor.models.registry import ModelRegistry
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.utils import resolve_kv_cache_layout
    from vllm.v1.core.kv_cache_planning import get_global_kv_cache_groups, get_kv_cache_configs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    mc, cc, pc = config.model_config, config.cache_config, config.parallel_config
    cls: Any
    cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, mc)
    specs: dict[str, Any] = {}
    with set_current_vllm_config(config):
        for name, kind in layer_names():
            if kind == "mamba":
                specs[name] = MambaSpec(shapes=cls.get_mamba_state_shape_from_config(config),
                                        dtypes=cls.get_mamba_state_dtype_from_config(config),
                                        block_size=cc.mamba_block_size, page_size_padded=cc.mamba_page_size_padded)
            else:
                specs[name] = CPUAttentionBackend.customize_spec(FullAttentionSpec(
                    block_size=cc.block_size, num_kv_heads=mc.get_num_kv_heads(pc), head_size=mc.get_head_size(),
                    dtype=mc.dtype))
        layout = resolve_kv_cache_layout(config, [["LBHNC"]], list(specs.values()))
        groups = get_global_kv_cache_groups(config, [specs])
        (kv_config,) = get_kv_cache_configs(config, [specs], [KV_MEMORY], groups)
    kv_config.kv_cache_layout = layout.name
    return kv_config


def allocate(config: Any, kv_config: Any) -> dict[str, torch.Tensor]:
    """vLLM's allocator on CPU (one backing buffer, per-layer views), kernel block = block."""
    from vllm.v1.kv_cache_layout import KVCacheLayout
    from vllm.v1.worker.utils import allocate_kv_cache

    kernel = [g.kv_cache_spec.block_size for g in kv_config.kv_cache_groups]
    return allocate_kv_cache(kv_config, torch.device("cpu"), KVCacheLayout[kv_config.kv_cache_layout], kernel)


def backing(kv_caches: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The whole backing allocation as a writable uint8 array (no copy)."""
    tensor = next(iter(kv_caches.values()))
    storage = tensor.untyped_storage()
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
    out: np.ndarray = flat.numpy()
    return out


def untouched_pattern(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


# -- the logical state of one request, and where vLLM keeps each rank's share --------------

def _bytes(seed: int, *shape: int) -> np.ndarray:
    """Deterministic bytes for one logical tensor (never all-equal, never the fill pattern)."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 255, shape, dtype=np.uint8)


def _heads_of(rank: int, tp: int, total: int) -> list[int]:
    """vLLM's KV-head partition: contiguous shards, one replicated head when TP > heads."""
    if tp <= total:
        per = total // tp
        return list(range(rank * per, (rank + 1) * per))
    return [rank * total // tp]


def write_request(kv_caches: Mapping[str, torch.Tensor], config: Any, *, seed: int, tp: int, rank: int,
                  num_tokens: int, attention_blocks: Sequence[int], state_block: int) -> None:
    """Write request ``seed``'s first ``num_tokens`` tokens and its running state, as vLLM would."""
    cfg = CONFIG
    bs = config.cache_config.block_size
    kv_heads, head_dim = cfg["num_key_value_heads"], cfg["head_dim"]
    heads, hd, ds, groups = cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["ssm_state_size"], cfg["n_groups"]
    rows = cfg["conv_kernel"] - 1
    x_dim, bc_dim = heads * hd, groups * ds
    conv_global = x_dim + 2 * bc_dim
    from vllm.model_executor.layers.mamba.mamba_utils import is_conv_state_dim_first

    for li, (name, kind) in enumerate(layer_names()):
        view = kv_caches[name]
        if kind == "attention":
            # [B, H_r, N, (K||V) * 2 bytes] per vLLM's LBHNC view of this layer
            values = _bytes(seed * 1000 + li, kv_heads, num_tokens, 2 * head_dim * 2)
            raw = view.view(torch.uint8).numpy()
            for hl, h in enumerate(_heads_of(rank, tp, kv_heads)):
                for t in range(num_tokens):
                    raw[attention_blocks[t // bs], hl, t % bs, :] = values[h, t]
        else:
            conv = _bytes(seed * 1000 + li, rows, conv_global, 2)  # (row, channel, fp16 byte)
            ssm = _bytes(seed * 1000 + 500 + li, heads, hd, ds, 4)
            # this rank's channels: its x heads, then its B groups, then its C groups
            hx = range(rank * x_dim // tp, (rank + 1) * x_dim // tp)
            g = range(rank * bc_dim // tp, (rank + 1) * bc_dim // tp)
            channels = [*hx, *(x_dim + c for c in g), *(x_dim + bc_dim + c for c in g)]
            local = conv[:, channels, :]
            if is_conv_state_dim_first():
                local = local.transpose(1, 0, 2)
            state = np.concatenate([local.reshape(-1), ssm[rank * heads // tp:(rank + 1) * heads // tp].reshape(-1)])
            page = view.view(torch.uint8).numpy()
            page[state_block, 0, 0, :state.size] = state

"""The layout is derived from vLLM's KVCacheConfig, and checked against vLLM's own tensors.

The reference is vLLM itself: its allocator's per-layer views (``allocate_kv_cache``) say
where each layer's block 0 is and how big a page is; its MambaSpec says the per-rank state
shapes. A derived layout that disagrees with any of them must be refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import vllm_engine
from hybridxfer.errors import LayoutError
from hybridxfer_vllm import ConnectorSettings, derive_layout, group_names
from hybridxfer_vllm._layout import check_tensors


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vllm_engine.write_model(tmp_path_factory.mktemp("model"))


def _engine(model: Path, tp: int, **kw: Any) -> tuple[Any, Any]:
    config = vllm_engine.engine_config(model, tp=tp, engine_id=f"e{tp}", **kw)
    return config, vllm_engine.kv_cache_config(config)


@pytest.mark.parametrize("conv", ["SD", "DS"])
def test_derived_layout_matches_vllm_allocation_at_every_tp(model: Path, conv: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.envs
    from vllm.model_executor.layers.mamba.mamba_utils import get_conv_state_layout

    monkeypatch.setenv("VLLM_SSM_CONV_STATE_LAYOUT", conv)
    vllm.envs.disable_envs_cache()  # vLLM caches env reads (and this choice) once read
    get_conv_state_layout.cache_clear()
    digests = set()
    for tp in (1, 2):
        config, kv_config = _engine(model, tp)
        assert group_names(kv_config) == ("0.mamba2", "1.attention")
        kv = vllm_engine.allocate(config, kv_config)
        for rank in range(tp):
            derived = derive_layout(config, kv_config, tp=tp, rank=rank)
            rl = derived.rank_layout
            assert derived.conv_layout == conv and derived.memory_layout == "LBHNC" and derived.has_state
            assert rl.logical_block_tokens == config.cache_config.block_size == 128
            assert rl.region_page_bytes == (kv_config.kv_cache_tensors[0].block_stride,)
            base = next(iter(kv.values())).untyped_storage().data_ptr()
            for name, tensor in kv.items():
                placed = [pp for pp in rl.placements if pp.layer == name]
                assert placed[0].base == tensor.data_ptr() - base
                if name.endswith("mixer"):  # Mamba: pieces are vLLM's (conv, ssm) shapes, in order
                    spec = kv_config.kv_cache_groups[0].kv_cache_spec
                    assert tuple(pp.piece.extents for pp in placed) == tuple(spec.shapes)
                    assert placed[1].base - placed[0].base == placed[0].piece.nbytes
                else:  # attention: this rank's heads x tokens x (K||V), vLLM's [H, N, C] page
                    assert placed[0].piece.nbytes == tensor[0].numel() * tensor.element_size()
            assert check_tensors(derived, kv)[0] == base
            digests.add(rl.model_digest)
    get_conv_state_layout.cache_clear()
    assert len(digests) == 1, "P and D at different TP must describe the same model"


def test_mamba_dims_come_from_the_model_not_the_rank(model: Path) -> None:
    config, kv_config = _engine(model, 2)
    spec: Any = dict(derive_layout(config, kv_config, tp=2, rank=1).rank_layout.layout.specs)["0.mamba2"]
    cfg = vllm_engine.CONFIG
    assert (spec.num_heads, spec.head_dim, spec.n_groups, spec.d_state, spec.conv_kernel) == (
        cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["n_groups"], cfg["ssm_state_size"], cfg["conv_kernel"])
    assert (spec.conv_dtype, spec.ssm_dtype) == ("float16", "float32")


def test_user_block_size_is_followed(model: Path) -> None:
    config, kv_config = _engine(model, 1, block_size=256)
    rl = derive_layout(config, kv_config, tp=1, rank=0).rank_layout
    assert rl.logical_block_tokens == 256 == rl.kernel_block_tokens
    assert rl.region_page_bytes == (kv_config.kv_cache_tensors[0].block_stride,)


def test_tensors_elsewhere_than_the_config_says_are_refused(model: Path) -> None:
    config, kv_config = _engine(model, 1)
    derived = derive_layout(config, kv_config, tp=1, rank=0)
    kv = vllm_engine.allocate(config, kv_config)
    wrong = dict(kv)
    name = "model.layers.3.mixer.attn"
    wrong[name] = kv["model.layers.1.mixer.attn"]  # a layer pointing at another layer's slab
    with pytest.raises(LayoutError, match=r"model\.layers\.3\.mixer\.attn.*starts at byte 0"):
        check_tensors(derived, wrong)
    separate = dict(kv)
    separate[name] = torch.zeros_like(kv[name])  # not in vLLM's backing allocation
    with pytest.raises(LayoutError, match="one backing allocation"):
        check_tensors(derived, separate)


def test_a_config_that_disagrees_with_vllm_shapes_is_refused(model: Path) -> None:
    config, kv_config = _engine(model, 2)
    broken = copy.deepcopy(kv_config)
    group = broken.kv_cache_groups[0]
    shapes = ((3, 40), group.kv_cache_spec.shapes[1])  # conv channels no rank of this model has
    group.kv_cache_spec = type(group.kv_cache_spec)(**{**group.kv_cache_spec.__dict__, "shapes": shapes})
    with pytest.raises(LayoutError, match=r"model\.layers\.0\.mixer.*derived state shapes"):
        derive_layout(config, broken, tp=2, rank=0)
    moved = copy.deepcopy(kv_config)
    moved.kv_cache_tensors[1].block_stride //= 2
    with pytest.raises(LayoutError, match="block strides"):
        derive_layout(config, moved, tp=2, rank=0)


def test_extra_config_is_checked() -> None:
    settings = ConnectorSettings.from_extra_config({"transport": "nixl", "lease_seconds": 5, "decode_tp": 2})
    assert (settings.transport, settings.lease_seconds, settings.decode_tp) == ("nixl", 5.0, 2)
    with pytest.raises(LayoutError) as err:
        ConnectorSettings.from_extra_config({"transprot": "tcp", "lease_seconds": -1, "decode_tp": "2"})
    text = str(err.value)
    assert "transprot" in text and "lease_seconds" in text and "decode_tp" in text

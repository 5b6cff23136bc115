"""Every layout file survives load -> dump_layout (memory form) -> load unchanged."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hybridxfer.errors import LayoutError
from hybridxfer.layout import dump_layout, load_layout, loads_layout

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "layouts"
FILES = sorted(LAYOUTS_DIR.rglob("*.toml"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LAYOUTS_DIR)))
def test_dump_and_reload_is_identity(path: Path) -> None:
    layout = load_layout(path)
    text = dump_layout(layout)
    again = loads_layout(text, source="<dumped>")
    assert again == layout
    assert again.digest == layout.digest
    assert again.model_digest == layout.model_digest
    assert dump_layout(again) == text
    assert again.for_rank(2, 1, num_blocks=3) == layout.for_rank(2, 1, num_blocks=3)


def test_examples_cover_every_arrangement() -> None:
    layouts = [load_layout(p) for p in FILES]
    specs = [s for lay in layouts for _, s in lay.specs]
    assert {getattr(s, "kv", None) for s in specs} >= {"packed", "halves", "separate"}
    assert {getattr(s, "conv_layout", None) for s in specs} >= {"DS", "SD"}
    assert {s.kind_name for s in specs} >= {"attention", "mla", "mamba1", "mamba2", "gdn"}
    assert any(r.slabs > 1 for lay in layouts for r in lay.regions)          # state pools
    assert any(len(r.views) > 1 for lay in layouts for r in lay.regions)     # shared regions
    assert any(lay.block.kernel not in ("logical", lay.block.logical) for lay in layouts)
    assert any("regions" in p.read_text() and "[model]" not in p.read_text() for p in FILES)


def test_engine_arrangement_changes_digest_not_model_digest() -> None:
    vllm = load_layout(LAYOUTS_DIR / "nemotron-3-nano-30b-a3b.toml")
    sglang = load_layout(LAYOUTS_DIR / "examples" / "nemotron-3-nano-sglang-state-pools.toml")
    assert vllm.model_digest == sglang.model_digest
    assert vllm.digest != sglang.digest
    gen1 = load_layout(LAYOUTS_DIR / "examples" / "granite-4.0-h-tiny-vllm-gen1-halves.toml")
    gen2 = load_layout(LAYOUTS_DIR / "granite-4.0-h-tiny.toml")
    assert gen1.model_digest == gen2.model_digest
    assert gen1.digest != gen2.digest


def test_memory_form_example_is_the_expanded_model_file() -> None:
    memory = load_layout(LAYOUTS_DIR / "examples" / "jamba-v0.1-memory-form.toml")
    model = load_layout(LAYOUTS_DIR / "jamba-v0.1.toml")
    assert memory == attrs.evolve(model, block=attrs.evolve(model.block, kernel=16))
    rank = memory.for_rank(1, 0, num_blocks=2)
    assert (rank.logical_block_tokens, rank.kernel_block_tokens, rank.blocks_per_kernel) == (80, 16, 5)


def test_overlap_in_one_group_is_rejected() -> None:
    layout = load_layout(Path(__file__).resolve().parent / "broken" / "overlapping_views_same_group.toml")
    with pytest.raises(LayoutError) as info:
        layout.for_rank(1, 0)
    first = info.value.problems[0]
    assert first.path == "regions[1].views"
    assert first.message.startswith("views of layers 'l0' and 'l2' overlap in bytes [100, 192) of region 'state'")

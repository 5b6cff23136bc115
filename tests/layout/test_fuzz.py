"""Hostile input: whatever text or data arrives, the loader raises LayoutError or returns a layout.

Anything else (KeyError, TypeError, AttributeError, RecursionError...) is a bug: a CLI would
print a traceback instead of the file, line and reason. Inputs are cheap to generate so
over 10,000 cases run in well under a minute.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridxfer.errors import LayoutError
from hybridxfer.layout import FORMAT, layout_from_dict, loads_layout

LAYOUTS_DIR = Path(__file__).resolve().parents[2] / "layouts"
BROKEN_DIR = Path(__file__).resolve().parent / "broken"
#: Small seeds (both forms), so each mutated case stays cheap to load and resolve.
SEEDS = [(LAYOUTS_DIR / n).read_text(encoding="utf-8")
         for n in ("deepseek-v2-lite.toml", "granite-4.0-h-tiny.toml", "examples/granite-4.0-h-tiny-vllm-gen1-halves.toml")]
SEEDS += [p.read_text(encoding="utf-8") for p in sorted(BROKEN_DIR.glob("*.toml"))]
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

KEYS = ("format", "model", "id", "pattern", "legend", "layers", "specs", "engine", "pooling",
        "block", "logical", "kernel", "align", "uniform_page", "kind", "num_kv_heads", "head_dim",
        "dtype", "kv", "order", "window", "latent_dim", "num_heads", "n_groups", "d_state",
        "conv_kernel", "conv_dtype", "ssm_dtype", "conv_layout", "d_inner", "k_heads", "k_dim",
        "v_heads", "v_dim", "num_spec", "groups", "regions", "views", "layer", "pieces", "offset",
        "slab", "slabs", "name", "spec", "layer_name", "M", "A", "*")
WORDS = ("attention", "mla", "mamba1", "mamba2", "gdn", "sliding_window", "bfloat16", "float32",
         "packed", "halves", "separate", "DS", "SD", "equalise", "logical", "hybrid-shared",
         "per-layer", "state-pools", "conv", "ssm", "kv", "k", "v", "latent", "M*-", "layers.{i}",
         "{spec}{i}{", "A", "M", "", FORMAT)

SCALARS: tuple[Any, ...] = (0, 1, 2, 3, 16, 64, -1, 2**40, -(2**63), True, False, 1.5, "", "x") + WORDS


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_document(rng: random.Random) -> dict[str, Any]:
    """A random nest of layout-ish keys and values; mostly with the right format string."""
    doc: dict[str, Any] = {rng.choice(KEYS): _value(rng, 1) for _ in range(rng.randrange(7))}
    if rng.random() < 0.9:
        doc["format"] = FORMAT  # mostly well-formed at the top, so the fuzz reaches deeper
    return doc


def _survives(load: Any, arg: Any) -> None:
    try:
        layout = load(arg)
    except LayoutError:
        return
    for tp in (1, 2, 3):
        try:
            layout.for_rank(tp, tp - 1, num_blocks=1)
        except LayoutError:
            pass


@settings(FUZZ, max_examples=4000)
@given(st.text(alphabet='[]{}="\'.,#\n abcdefgklmnoprstuvy0123456789-_*', max_size=120))
def test_random_text(text: str) -> None:
    _survives(loads_layout, text)


@settings(FUZZ, max_examples=3000)
@given(st.sampled_from(SEEDS), st.integers(0, 10**6), st.integers(0, 40), st.text(max_size=8))
def test_mutated_real_files(seed: str, where: int, cut: int, insert: str) -> None:
    at = where % (len(seed) + 1)
    _survives(loads_layout, seed[:at] + insert + seed[at + cut:])


@settings(FUZZ, max_examples=4000)
@given(st.randoms(use_true_random=False))
def test_random_structured_data(rng: random.Random) -> None:
    _survives(layout_from_dict, random_document(rng))

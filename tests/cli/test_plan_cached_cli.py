"""``hybridxfer plan --dst-cached-tokens``: a prefix-cache hit on D, as a user runs it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import NEMOTRON, run_cli

# P TP 2 -> D TP 1: 2096-token blocks on both sides, 6 attention layers x 1024 B per token
# (two KV heads x 128 x bf16 x K,V) at D TP 1
BASE = ("plan", NEMOTRON, "--src-tp", "2", "--dst-tp", "1", "--tokens", "5000")
PER_TOKEN = 6 * 1024


def _json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, *BASE, "--json", *extra)
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_hit_inside_a_block_moves_that_block_whole(capsys: pytest.CaptureFixture[str]) -> None:
    full = _json(capsys)
    hit = _json(capsys, "--dst-cached-tokens", "2200")
    assert set(full) <= set(hit)  # every field stays; the hit adds to them
    assert full["skipped_cached_bytes"] == 0 and full["dst_cached"] == {}
    assert hit["skipped_cached_bytes"] == 2096 * PER_TOKEN == full["bytes"] - hit["bytes"]
    assert hit["dst_cached"] == {"attention.0": {"requested_tokens": 2200, "kept_tokens": 2096, "blocks": [0]}}
    assert hit["dst_blocks"]["attention.0"] == [1, 2]
    assert hit["bytes_by_kind"]["mamba2"] == full["bytes_by_kind"]["mamba2"]  # every state still moves


def test_per_group_form_equals_the_single_count(capsys: pytest.CaptureFixture[str]) -> None:
    single = _json(capsys, "--dst-cached-tokens", "4192")
    per_group = _json(capsys, "--dst-cached-tokens", "attention.0=4192, mamba.0=4192")
    assert single == per_group
    assert single["skipped_cached_bytes"] == 2 * 2096 * PER_TOKEN


def test_summary_says_what_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *BASE, "--dst-cached-tokens", "2200")
    assert code == 0, err
    assert f"prefix-cache hit on D: {2096 * PER_TOKEN:,} B not moved; every state still moves" in out
    assert ("D group 'attention.0': 2200 tokens cached, keeps 2096 (1 block of 2096); the hit ends inside "
            "block #1 (tokens 2096..), which moves whole") in out


@pytest.mark.parametrize(
    ("value", "code", "message"),
    [
        ("6000", 1, "D group 'attention.0': dst_cached_tokens=6000 exceeds the request's 5000 tokens"),
        ("-3", 1, "dst_cached_tokens for D group 'attention.0' is -3: it must be >= 0"),
        ("attention.7=10", 1, "D has no KV group(s) ['attention.7'] (counts [10])"),
        ("ten", 2, "--dst-cached-tokens: 'ten' is not a token count"),
        ("attention.0=1,attention.0=2", 2, "group 'attention.0' is given twice"),
        ("=5", 2, "'=5' is not GROUP=K"),
    ],
)
def test_bad_counts_are_clear_errors(capsys: pytest.CaptureFixture[str], value: str, code: int, message: str) -> None:
    got, out, err = run_cli(capsys, *BASE, "--dst-cached-tokens", value)
    assert got == code
    assert message in err and "Traceback" not in err

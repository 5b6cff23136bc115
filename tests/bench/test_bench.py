"""Smoke tests for ``hybridxfer bench``: they check shapes and invariants, never timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybridxfer.bench._e2e import duplicate_bytes
from hybridxfer.bench._planner import plan_rows, run_planner_benchmark
from hybridxfer.bench._reference import canonical, reference_descriptors
from hybridxfer.bench._report import case_table, svg_chart
from hybridxfer.bench._results import CaseResult, spread
from hybridxfer.layout import RankLayout, load_layout
from hybridxfer.plan import TransferPlan
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for

LAYOUTS = Path(__file__).resolve().parents[2] / "layouts"
NEMOTRON = LAYOUTS / "nemotron-3-nano-30b-a3b.toml"
REQUIRED = {"transport", "layout", "src_tp", "dst_tp", "tokens", "bytes", "seconds", "gbps", "ceiling_gbps", "ratio"}


def _pair(src_tp: int, dst_tp: int, tokens: int) -> tuple[tuple[RankLayout, ...], RankLayout,
                                                            dict[str, list[int]], dict[str, list[int]]]:
    layout = load_layout(NEMOTRON)
    src = tuple(layout.for_rank(src_tp, r, num_blocks=blocks_for(layout, src_tp, tokens, rank=r))
                for r in range(src_tp))
    dst = layout.for_rank(dst_tp, 0, num_blocks=blocks_for(layout, dst_tp, tokens))
    return src, dst, contiguous_block_tables(src[0], tokens), contiguous_block_tables(dst, tokens)


@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 1), (1, 4), (4, 2), (2, 1)])
def test_reference_loop_moves_the_same_bytes_as_the_plan(src_tp: int, dst_tp: int) -> None:
    src, dst, sb, db = _pair(src_tp, dst_tp, 5000)
    ref = canonical(np.array(reference_descriptors(src, dst, sb, db, 5000), dtype=np.int64))
    for coalesce in (True, False):
        plan = compile_plan(src, dst, coalesce=coalesce).bind(sb, db, num_tokens=5000)
        assert isinstance(plan, TransferPlan)
        assert np.array_equal(ref, canonical(plan_rows(plan)))


@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 4), (4, 2), (1, 1)])
def test_no_padding_and_no_duplicate_bytes_on_the_wire(src_tp: int, dst_tp: int) -> None:
    """Every byte moved is a real state/KV byte D needs, and none lands twice."""
    tokens = 4096
    src, dst, sb, db = _pair(src_tp, dst_tp, tokens)
    template = compile_plan(src, dst)
    plan = template.bind(sb, db, num_tokens=tokens)
    assert isinstance(plan, TransferPlan)
    stats = plan.statistics
    assert duplicate_bytes(plan) == 0
    # exact payload: state pieces whole, token pieces for exactly the request's tokens
    want = sum(pp.piece.nbytes * tokens // dst.kernel_block_tokens
               if pp.piece.has_tokens else pp.piece.nbytes for pp in dst.placements)
    assert stats.bytes == want
    assert stats.padding_bytes_skipped > 0  # pooled pages carry padding that is not moved
    assert stats.descriptor_count * 4 <= stats.descriptor_count_uncoalesced or src_tp == dst_tp


def test_planner_benchmark_reports_matching_loop() -> None:
    (result,) = run_planner_benchmark(NEMOTRON, [(1, 4)], 2048, repeats=1)
    doc = result.to_json()
    assert doc["matches"] is True
    assert result.descriptors <= result.descriptors_uncoalesced


def test_report_renders_table_json_and_svg() -> None:
    s = spread([0.2, 0.1, 0.3])
    case = CaseResult(transport="tcp", layout="m", src_tp=1, dst_tp=2, tokens=1024, requests=1, bytes=10**8,
                      descriptors=3, descriptors_uncoalesced=9, padding_bytes_skipped=5, duplicate_bytes=0,
                      hybridxfer=s, ceiling_name="raw-socket", ceiling=spread([0.1] * 5), memcpy=s,
                      plan_compile=s, plan_bind=s, plan_prepare=s, verified=True)
    assert REQUIRED <= set(case.to_json())
    assert case.to_json()["vs_vllm"] is None and case.to_json()["vllm_descriptors_gbps"] is None
    assert "raw-socket" in case_table([case])
    svg = svg_chart([case])
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")


@pytest.mark.slow
def test_quick_run_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The CI smoke run: all three transports between processes, bytes verified."""
    from hybridxfer.bench import main

    import hybridxfer_nixl  # noqa: F401  (installed by the README's install command; a missing plugin fails)
    import hybridxfer_ucxx  # noqa: F401
    assert main(["--quick", "--json", "--svg", str(tmp_path / "p.svg")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["transport"] for c in doc["cases"]} == {"tcp", "nixl", "ucxx"}
    for case in doc["cases"]:
        assert REQUIRED <= set(case)
        assert case["duplicate_bytes"] == 0
        assert case["runs"] >= 5
        # vLLM's per-kernel-block descriptors through raw NIXL, same bytes, beside every NIXL case
        has_baseline = case["vllm_descriptors_gbps"] is not None and case["vs_vllm"] is not None
        assert has_baseline == (case["transport"] == "nixl")
        if has_baseline:
            assert case["vllm_descriptor_count"] >= case["descriptors"]
    assert any(c["verified"] for c in doc["cases"])
    assert all(p["matches"] for p in doc["planner"])


def test_plugins_bring_their_raw_paths_through_an_entry_point() -> None:
    from hybridxfer.bench._raw import raw_plugin

    ucxx_raw = raw_plugin("ucxx")
    assert ucxx_raw.__name__ == "hybridxfer_ucxx.raw"
    assert {"RawReceiver", "RawSender"} <= set(ucxx_raw.__all__)
    with pytest.raises(RuntimeError, match=r"no raw carrier-pigeon path is installed .* has \[.*'ucxx'.*\]\); install hybridxfer-carrier-pigeon"):
        raw_plugin("carrier-pigeon")

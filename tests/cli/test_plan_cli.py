"""``hybridxfer plan``: the JSON contract, its numbers, --blocks, pictures and usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hybridxfer.cli._blocks import BlockSpecError, parse_blocks
from tests.cli.conftest import NEMOTRON, run_cli

TOKENS = 2048


def _plan(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "plan", NEMOTRON, "--json", *extra)
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_nemotron_p1_d4_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _plan(capsys, "--src-tp", "1", "--dst-tp", "4", "--dst-rank", "2", "--tokens", str(TOKENS))
    # 6 attention layers x tokens x 512 B (one KV head x 128 x bf16 x K,V); 23 Mamba2 layers x 533,504 B.
    assert doc["bytes_by_kind"] == {"attention": 6 * TOKENS * 512, "mamba2": 23 * 533_504}
    assert doc["padding_bytes_skipped"] == 23 * 7_168
    assert doc["bytes"] == sum(doc["bytes_by_kind"].values())
    assert doc["descriptor_count"] == sum(len(r["descriptors"]) for r in doc["reads"])
    assert [r["src_rank"] for r in doc["reads"]] == [0]
    for read in doc["reads"]:
        assert set(read) >= {"src_rank", "descriptors"}
        for src_region, src_offset, dst_region, dst_offset, length in read["descriptors"]:
            assert isinstance(src_region, str) and src_region.startswith("kv_cache.")
            assert isinstance(dst_region, str) and dst_region.startswith("kv_cache.")
            assert src_offset >= 0 and dst_offset >= 0 and length > 0
    assert sum(d[4] for r in doc["reads"] for d in r["descriptors"]) == doc["bytes"]


def test_fan_in_reads_from_two_p_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _plan(capsys, "--src-tp", "4", "--dst-tp", "2", "--tokens", str(TOKENS))
    assert [r["src_rank"] for r in doc["reads"]] == [0, 1]
    assert doc["bytes_by_kind"]["mamba2"] == 23 * 2 * 533_504


def test_blocks_spec_equals_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    by_tokens = _plan(capsys, "--src-tp", "1", "--dst-tp", "2", "--tokens", "4096")
    # P1 and D2 both use 2096-token blocks: 2 attention blocks, then one block per Mamba group.
    spec = "attention.0=0-1,mamba.0=2,mamba.1=3,mamba.2=4,mamba.3=5"
    by_blocks = _plan(capsys, "--src-tp", "1", "--dst-tp", "2", "--blocks", spec)
    assert by_blocks["descriptor_count"] == by_tokens["descriptor_count"]
    assert by_blocks["bytes_by_kind"]["mamba2"] == by_tokens["bytes_by_kind"]["mamba2"]
    # Without --tokens every covered token moves (2 x 2096).
    assert by_blocks["bytes_by_kind"]["attention"] == 6 * 2 * 2096 * 512  # one KV head per D rank


def test_blocks_spec_src_and_dst(capsys: pytest.CaptureFixture[str]) -> None:
    spec = ("src:attention.0=0,mamba.0=1,mamba.1=2,mamba.2=3,mamba.3=4;"
            "dst:attention.0=9,mamba.0=3,mamba.1=5,mamba.2=7,mamba.3=0")
    doc = _plan(capsys, "--src-tp", "2", "--dst-tp", "2", "--blocks", spec)
    assert doc["dst_blocks"]["attention.0"] == [9]
    assert doc["dst_blocks"]["mamba.3"] == [0]


def test_no_coalesce_has_more_descriptors(capsys: pytest.CaptureFixture[str]) -> None:
    on = _plan(capsys, "--src-tp", "1", "--dst-tp", "4", "--tokens", str(TOKENS))
    off = _plan(capsys, "--src-tp", "1", "--dst-tp", "4", "--tokens", str(TOKENS), "--no-coalesce")
    assert off["descriptor_count"] > on["descriptor_count"]
    assert off["bytes"] == on["bytes"]


def test_readable_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "4", "--tokens", "100")
    assert code == 0
    assert "P TP 1 -> D TP 4" in out and "padding skipped" in out and "mamba2" in out


def test_svg_and_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    svg, png = tmp_path / "p.svg", tmp_path / "p.png"
    argv = ["plan", NEMOTRON, "--src-tp", "4", "--dst-tp", "2", "--tokens", "512", "--svg", str(svg)]
    if shutil.which("rsvg-convert"):
        argv += ["--png", str(png)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    text = svg.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "conv" in text or ">x<" in text
    if shutil.which("rsvg-convert"):
        assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("argv", [
    ["--src-tp", "1", "--dst-tp", "2"],                                  # neither --tokens nor --blocks
    ["--src-tp", "1", "--dst-tp", "2", "--tokens", "5", "--blocks", "a=1"],
    ["--src-tp", "1", "--dst-tp", "2", "--blocks", "attention.0=3-1"],
    ["--src-tp", "1", "--dst-tp", "2", "--dst-rank", "2", "--tokens", "5"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run_cli(capsys, "plan", NEMOTRON, *argv)
    assert code == 2 and err


def test_library_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "2", "--blocks", "nosuch.0=1")
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_parse_blocks_grammar() -> None:
    spec = parse_blocks("a=0-2+7,b=x+4")
    assert spec.src == spec.dst == {"a": [0, 1, 2, 7], "b": [-1, 4]}
    two = parse_blocks("src: a=1 ; dst: a=2")
    assert (two.src, two.dst) == ({"a": [1]}, {"a": [2]})
    for bad in ("", "a", "a=1,a=2", "src:a=1", "a=1;b=2", "a=q", "src:a=1;src:a=2"):
        with pytest.raises(BlockSpecError):
            parse_blocks(bad)

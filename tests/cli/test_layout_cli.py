"""``hybridxfer layout check | show | expand | from-hf``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hybridxfer.layout import loads_layout
from tests.cli.conftest import NEMOTRON, REPO, run_cli

_ALL_BROKEN = sorted((REPO / "tests" / "layout" / "broken").glob("*.toml"))
# Files marked "# for_rank: tp=N" are valid at TP 1 and fail only at that TP.
BROKEN = [p for p in _ALL_BROKEN if "# for_rank:" not in p.read_text()]
TP_BROKEN = [p for p in _ALL_BROKEN if "# for_rank:" in p.read_text()]


def test_check_every_shipped_layout_passes(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (REPO / "layouts").glob("*.toml"))
    code, out, err = run_cli(capsys, "layout", "check", *files)
    assert code == 0, err
    assert out.count(": ok") == len(files)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_check_broken_file_reports_file_and_line(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, _, err = run_cli(capsys, "layout", "check", str(path))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"{path}") for line in lines)
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    expect = re.search(r"# expect: line=(\d+)", header)
    if expect:
        assert any(line.startswith(f"{path}:{expect.group(1)}: ") for line in lines), lines


def test_check_reports_every_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "layout", "check", NEMOTRON, str(BROKEN[0]), str(BROKEN[1]))
    assert code == 1
    assert f"{NEMOTRON}: ok" in out
    assert str(BROKEN[0]) in err and str(BROKEN[1]) in err


def test_show_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "layout", "show", NEMOTRON, "--tp", "4", "--rank", "1", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["tp"] == 4 and [r["rank"] for r in doc["ranks"]] == [1]
    region = doc["ranks"][0]["regions"][0]
    assert region["page_bytes"] == 540672
    mamba = next(v for v in region["views"] if v["kind"] == "mamba2")
    assert [p["piece"] for p in mamba["pieces"]] == ["conv", "ssm"]
    assert mamba["padding"] == 7168 and mamba["bytes"] == 533504
    assert mamba["pieces"][1]["offset"] == mamba["pieces"][0]["bytes"]


def test_show_text_and_svg(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    svg = tmp_path / "layout.svg"
    code, out, _ = run_cli(capsys, "layout", "show", NEMOTRON, "--tp", "2", "--svg", str(svg))
    assert code == 0
    assert "rank 0/2" in out and "rank 1/2" in out and "padding 6,144 B" in out
    assert svg.read_text().startswith("<svg") and "kv_cache.0" in svg.read_text()


def test_show_bad_rank_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "layout", "show", NEMOTRON, "--tp", "2", "--rank", "2")
    assert code == 2 and "--rank" in err


def test_expand_loads_back_equal(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "layout", "expand", NEMOTRON)
    assert code == 0
    from hybridxfer.layout import load_layout

    assert loads_layout(out).digest == load_layout(NEMOTRON).digest


def test_from_hf_delegates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "n.toml"
    config = REPO / "tests" / "hf" / "configs" / "nemotron-3-nano-30b-a3b.json"
    code, _, err = run_cli(capsys, "layout", "from-hf", str(config), "--engine", "vllm", "-o", str(out_file))
    assert code == 0, err
    assert run_cli(capsys, "layout", "check", str(out_file))[0] == 0


def test_missing_file_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "layout", "expand", "no-such-file.toml")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: no-such-file.toml") and "Traceback" not in err


@pytest.mark.parametrize("path", TP_BROKEN, ids=lambda p: p.stem)
def test_show_reports_tp_problems(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    tp = re.search(r"# for_rank: tp=(\d+)", path.read_text())
    assert tp is not None
    code, _, err = run_cli(capsys, "layout", "show", str(path), "--tp", tp.group(1))
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err

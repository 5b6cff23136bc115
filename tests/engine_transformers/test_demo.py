"""``hybridxfer demo --engine transformers`` as a user runs it: real processes, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridxfer.cli._demo_transformers import report_text

ROOT = Path(__file__).resolve().parents[2]


def _demo(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridxfer.cli", "demo", "--engine", "transformers", *argv],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


@pytest.fixture(scope="module")
def zamba2_demo() -> subprocess.CompletedProcess[str]:
    """Zamba2 (hybrid layers: KV and Mamba2 state in one cache layer), P TP 2 -> D TP 4, --json."""
    return _demo("--family", "zamba2", "--src-tp", "2", "--dst-tp", "4", "--json")


def test_demo_json_resharded_over_tcp(zamba2_demo: subprocess.CompletedProcess[str]) -> None:
    result = zamba2_demo
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert {k: doc[k] for k in ("family", "src_tp", "dst_tp", "transport", "identical", "max_abs_logit_diff")} == {
        "family": "zamba2", "src_tp": 2, "dst_tp": 4, "transport": "tcp", "identical": True,
        "max_abs_logit_diff": 0.0}
    assert doc["bytes"] > 0 and doc["source_ranks"] == [0, 1]
    assert doc["decoded"] == doc["monolithic"] and len(doc["decoded"]) == 16
    assert "Traceback" not in result.stderr


def test_demo_table_side_by_side(zamba2_demo: subprocess.CompletedProcess[str]) -> None:
    """Without --json the same result is a table: both continuations, bytes, seconds, the verdict."""
    doc = json.loads(zamba2_demo.stdout)
    lines = report_text(doc).splitlines()
    assert lines[0] == "transformers demo: zamba2 (random weights, no tokenizer: token ids), P TP 2 -> D TP 4 over tcp"
    assert lines[3].split() == ["step", "monolithic", "generate", "D", "after", "transfer"]
    rows = [line.split() for line in lines[4:20]]
    assert [int(r[0]) for r in rows] == list(range(1, 17)) and all(r[1] == r[2] for r in rows)
    assert lines[-2].startswith(f"moved {doc['bytes']:,} bytes from P ranks (0, 1) in ")
    assert lines[-1] == "verdict: logits identical (max |logit difference| 0)"
    differing = dict(doc, decoded=[t + 1 for t in doc["decoded"]], identical=False, max_abs_logit_diff=2.5)
    assert report_text(differing).splitlines()[4].endswith("<- differs")
    assert report_text(differing).splitlines()[-1] == "verdict: logits DIFFER (max |logit difference| 2.5)"


def test_demo_geometry_error_is_one_line() -> None:
    """Mamba2's 8 heads do not split over 3 ranks: exit 1, the layout's reason, no traceback."""
    result = _demo("--family", "mamba2", "--src-tp", "3")
    assert result.returncode == 1
    assert "error: LayoutError: 1 layout problem: <Mamba2ForCausalLM config>: specs.mamba: TP=3: x: 8 units " \
           "cannot be split over TP=3" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_demo_usage_errors() -> None:
    assert _demo("--family", "gpt2").returncode == 2
    bad = _demo("--layout", "nemotron-3-nano-30b-a3b")
    assert bad.returncode == 2 and "derives its layout from the model's config" in bad.stderr

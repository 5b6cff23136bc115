"""``hybridxfer plan`` with pipeline parallelism: --src-pp, --dst-pp, --dst-stage, partitions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import NEMOTRON, run_cli

TOKENS = 2048


def _plan(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "plan", NEMOTRON, "--json", "--tokens", str(TOKENS), *extra)
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_pp_fields_default_to_one_stage(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _plan(capsys, "--src-tp", "2", "--dst-tp", "2")
    assert (doc["src_pp"], doc["dst_pp"], doc["dst_stage"]) == (1, 1, 0)
    assert [(r["src_rank"], r["src_stage"], r["src_tp_rank"]) for r in doc["reads"]] == [(0, 0, 0)]


def test_p_pp2_tp2_to_d_tp4_reads_each_layer_from_its_stage(capsys: pytest.CaptureFixture[str]) -> None:
    whole = _plan(capsys, "--src-tp", "2", "--dst-tp", "4", "--dst-rank", "3")
    piped = _plan(capsys, "--src-tp", "2", "--src-pp", "2", "--dst-tp", "4", "--dst-rank", "3")
    # the same bytes land on D; they now come from TP rank 1 of both P stages (global ranks 1, 3)
    assert piped["bytes_by_kind"] == whole["bytes_by_kind"]
    assert [(r["src_rank"], r["src_stage"], r["src_tp_rank"]) for r in piped["reads"]] == [(1, 0, 1), (3, 1, 1)]
    assert piped["notify_ranks"] == [1, 3]
    assert sum(r["bytes"] for r in piped["reads"]) == whole["bytes"]


def test_d_stages_split_the_request(capsys: pytest.CaptureFixture[str]) -> None:
    whole = _plan(capsys, "--src-tp", "1", "--dst-tp", "2")
    stages = [_plan(capsys, "--src-tp", "1", "--dst-pp", "2", "--dst-tp", "2", "--dst-stage", str(s))
              for s in range(2)]
    assert sum(s["bytes"] for s in stages) == whole["bytes"]
    assert all(s["dst_pp"] == 2 for s in stages) and [s["dst_stage"] for s in stages] == [0, 1]
    skewed = [_plan(capsys, "--src-tp", "1", "--dst-pp", "2", "--dst-tp", "2", "--dst-stage", str(s),
                    "--dst-pp-partition", "40,12") for s in range(2)]
    assert sum(s["bytes"] for s in skewed) == whole["bytes"] and skewed[1]["bytes"] < stages[1]["bytes"]


@pytest.mark.parametrize(("extra", "message"), [
    (("--dst-pp", "2", "--dst-stage", "2"), "--dst-stage 2 is outside D's PP size 2"),
    (("--src-pp", "0"), "--src-pp must lie in"),
    (("--src-pp", "2", "--src-pp-partition", "30,21"), "adds up to 51 layers but the model has 52"),
    (("--src-pp", "2", "--src-pp-partition", "30;22"), "comma-separated layer counts"),
])
def test_bad_pipeline_options_are_clean_errors(capsys: pytest.CaptureFixture[str], extra: tuple[str, ...],
                                               message: str) -> None:
    code, out, err = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--tokens", "16", *extra)
    assert code != 0 and message in err and "Traceback" not in err

"""``serve --metrics-port``: a Prometheus endpoint, scraped over HTTP on 127.0.0.1.

The samples are parsed with ``prometheus_client``'s own text parser and compared with
what the puller reports it moved: the exporter must count exactly the bytes and requests
that crossed, and time each completed request once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli._serving import Served, serving
from tests.cli.conftest import REPO, run_process

MODEL = "nemotron-3-nano-30b-a3b"


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics_url(s: Served) -> str:
    [line] = [ln for ln in s.first_lines if ln.startswith("metrics on ")]
    return line.removeprefix("metrics on ")


def _after(url: str, key: str, value: float) -> dict[str, float]:
    """Scrape until ``key`` reaches ``value`` (P counts a request when D's done notification lands)."""
    for _ in range(400):
        samples = _scrape(url)
        if samples.get(key) == value:
            return samples
        time.sleep(0.05)
    return _scrape(url)


def test_scrape_counts_what_the_puller_moved(tmp_path: Path) -> None:
    with serving(tmp_path, MODEL, "--tp", "2", "--tokens", "128", "--requests", "2", "--metrics-port", "0") as s:
        url = _metrics_url(s)
        assert s.first_lines[0].startswith("listening on ") and url.startswith("http://127.0.0.1:")
        before = _scrape(url)
        for rank in ("0", "1"):
            labels = f"{{agent=serve-p{rank},rank={rank}}}"
            assert before[f"hybridxfer_bytes_served_total{labels}"] == 0
            assert before[f"hybridxfer_requests_completed_total{labels}"] == 0
            assert before[f"hybridxfer_transfer_seconds_count{labels}"] == 0
        pull = run_process("pull", MODEL, "--src-tp", "2", "--dst-tp", "1", "--rank", "0", "--connect", s.address,
                           "--json")
        assert pull.returncode == 0, pull.stderr
        moved = json.loads(pull.stdout)
        after = _after(url, "hybridxfer_requests_completed_total{agent=serve-p1,rank=1}", 2)
        served = [after[f"hybridxfer_bytes_served_total{{agent=serve-p{r},rank={r}}}"] for r in (0, 1)]
        assert sum(served) == moved["bytes"] and all(n > 0 for n in served)
        for r in (0, 1):
            labels = f"{{agent=serve-p{r},rank={r}}}"
            assert after[f"hybridxfer_requests_completed_total{labels}"] == 2
            assert after[f"hybridxfer_transfer_seconds_count{labels}"] == 2
            assert after[f"hybridxfer_transfer_seconds_sum{labels}"] > 0
            assert after[f"hybridxfer_transfer_seconds_bucket{{agent=serve-p{r},le=+Inf,rank={r}}}"] == 2
            assert after[f"hybridxfer_transfer_failures_total{labels}"] == 0
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.removesuffix("/metrics") + "/other", timeout=10)
        assert missing.value.code == 404
        missing.value.close()


def test_metrics_port_without_the_extra_is_one_clear_error() -> None:
    blocked = ("import sys; sys.modules['prometheus_client'] = None; from hybridxfer.cli import main; "
               f"sys.exit(main(['serve', {MODEL!r}, '--tp', '1', '--listen', '127.0.0.1:0', '--metrics-port', '0']))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1 and result.stdout == ""  # refused before listening
    assert result.stderr.startswith("error: metrics need the optional 'metrics' extra: "
                                    "pip install 'hybridxfer[metrics]'") and "Traceback" not in result.stderr

"""Real models: a prefilled cache crosses processes, resharded, and decoding stays bit-identical.

For every family a seeded tiny model (weights re-scaled so one wrong state value moves the
logits) prefills a 40-token prompt in a P process; a D process pulls the cache with
hybridxfer at each (P TP, D TP) pair, puts its ranks' shards back together with this
test's own inverse (``_tp.join``, written from the model definitions), and decodes 16
tokens. Pass: the 16 steps' logits are ``torch.equal`` to one monolithic ``generate``,
and the rebuilt cache equals P's byte for byte. Each family's negative control rebuilds
one pull wrongly and must fail the same comparison.

One P and one D process per transport hold every family and TP pair (imports dominate).
Every (P TP, D TP) in {(1,1), (1,2), (2,1), (1,4)} is valid for every family's geometry.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from hybridxfer.engine.transformers import TINY_FAMILIES

HERE = Path(__file__).resolve().parent
PAIRS = ((1, 1), (1, 2), (2, 1), (1, 4))
TRANSPORTS = ("tcp", "nixl", "ucxx")
#: Families moved over the plugin transports as well (tcp moves all ten).
PLUGIN_FAMILIES = {"nixl": ("nemotron_h", "qwen3_next"), "ucxx": ("jamba", "zamba2")}
#: family -> (P TP, D TP, what the rebuild gets wrong) for its negative control.
CONTROLS: dict[str, tuple[int, int, str]] = {
    "llama": (1, 2, "kv_rank_order"),
    "nemotron_h": (1, 2, "swap_bc"),
    "bamba": (1, 2, "swap_bc"),
    "granitemoehybrid": (1, 2, "swap_bc"),
    "falcon_h1": (1, 2, "swap_bc"),
    "zamba2": (1, 2, "swap_bc"),
    "mamba2": (1, 2, "swap_bc"),
    "mamba": (1, 2, "ssm_rank_order"),
    "jamba": (1, 2, "ssm_rank_order"),
    "qwen3_next": (1, 2, "ssm_rank_order"),
}
DEADLINE = 240.0


@attrs.frozen
class Run:
    """One transport's P and D processes: where they wrote, and what they reported."""

    out: Path
    metas: dict[tuple[str, int], dict[str, Any]]
    done: dict[tuple[str, int, int], dict[str, Any]]
    #: seconds from the start until P was ready, D had finished, P had exited
    phases: dict[str, float]


def _families(transport: str) -> tuple[str, ...]:
    return TINY_FAMILIES if transport == "tcp" else PLUGIN_FAMILIES[transport]


def _stop(proc: subprocess.Popen[str]) -> None:
    """Kill a peer that is still running (a failed run); the with-block closes its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _run(transport: str, out: Path) -> Run:
    started = time.perf_counter()
    families = _families(transport)
    jobs = [[f, p, d] for f in families for p, d in PAIRS]
    controls = {f: list(c) for f, c in CONTROLS.items() if f in families} if transport == "tcp" else {}
    with contextlib.ExitStack() as stack:
        prefill = stack.enter_context(subprocess.Popen(
            [sys.executable, str(HERE / "_prefill_peer.py"), "--transport", transport, "--families",
             ",".join(families), "--src-tps", "1,2", "--dst-tps", "1,2,4", "--out", str(out),
             "--deadline", str(DEADLINE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        stack.callback(_stop, prefill)
        watchdog = threading.Timer(DEADLINE, prefill.kill)  # a P that hangs before READY ends the read
        watchdog.start()
        stack.callback(watchdog.cancel)
        assert prefill.stdout is not None and prefill.stdin is not None
        lines = []
        for line in prefill.stdout:
            lines.append(line)
            if line.strip() == "READY":
                break
        else:
            raise AssertionError(f"P process ended before READY (status {prefill.wait(10)})")
        phases = {"p_ready": time.perf_counter() - started}
        decode = stack.enter_context(subprocess.Popen(
            [sys.executable, str(HERE / "_decode_peer.py"), "--transport", transport, "--jobs", json.dumps(jobs),
             "--controls", json.dumps(controls), "--out", str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        stack.callback(_stop, decode)
        report, _ = decode.communicate("".join(lines), timeout=DEADLINE)
        assert decode.returncode == 0, f"D process failed (status {decode.returncode}):\n{report}"
        phases["d_done"] = time.perf_counter() - started
        prefill.stdin.write("exit\n")
        prefill.stdin.flush()
        assert prefill.wait(30) == 0
        phases["p_exited"] = time.perf_counter() - started
    metas = {(m["family"], m["src_tp"]): m for m in (json.loads(x[5:]) for x in lines if x.startswith("META "))}
    done = {(d["family"], d["src_tp"], d["dst_tp"]): d
            for d in (json.loads(x[5:]) for x in report.splitlines() if x.startswith("DONE "))}
    assert "END" in report.splitlines(), report
    return Run(out, metas, done, phases)


@pytest.fixture(scope="session")
def transformers_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Run]]:
    """Every transport's processes, started together on first use (their imports overlap).

    A run that failed fails every test that reads it, without running again.
    """
    futures: dict[str, concurrent.futures.Future[Run]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(TRANSPORTS)) as pool:
        def get(transport: str) -> Run:
            if not futures:
                for t in TRANSPORTS:
                    futures[t] = pool.submit(_run, t, tmp_path_factory.mktemp(f"transformers-{t}"))
            return futures[transport].result(timeout=2 * DEADLINE)

        yield get


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path)
    return loaded


CASES = [(t, f, p, d) for t in TRANSPORTS for f in _families(t) for p, d in PAIRS]


@pytest.mark.parametrize(("transport", "family", "src_tp", "dst_tp"), CASES,
                         ids=[f"{t}-{f}-p{p}d{d}" for t, f, p, d in CASES])
def test_decoding_continues_bit_identically(transformers_run: Callable[[str], Run], transport: str, family: str,
                                            src_tp: int, dst_tp: int) -> None:
    run = transformers_run(transport)
    ref = _load(run.out / f"{family}.ref.pt")
    got = _load(run.out / f"{family}.p{src_tp}d{dst_tp}.pt")
    p_cache = _load(run.out / f"{family}.cache.pt")
    assert set(got["cache"]) == set(p_cache)
    differing = [r for r in p_cache if not torch.equal(got["cache"][r].view(torch.uint8), p_cache[r].view(torch.uint8))]
    assert not differing, f"rebuilt cache differs from P's in {differing}"
    assert got["tokens"] == ref["tokens"][1:]
    assert torch.equal(got["logits"], ref["logits"][1:])
    assert run.done[family, src_tp, dst_tp]["bytes"] > 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefill_matches_generate(transformers_run: Callable[[str], Run], family: str) -> None:
    """P's prefill logits (hence its first token) are generate's first step, bit for bit."""
    meta = transformers_run("tcp").metas[family, 1]
    assert meta["prefill_equal"] is True
    assert meta["first_token"] == _load(transformers_run("tcp").out / f"{family}.ref.pt")["tokens"][0]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_negative_control_fails_the_comparison(transformers_run: Callable[[str], Run], family: str) -> None:
    """The same pull rebuilt with one mistake (B/C swapped, heads from the wrong rank) is caught."""
    run = transformers_run("tcp")
    ref = _load(run.out / f"{family}.ref.pt")
    wrong = _load(run.out / f"{family}.control.pt")
    assert wrong["mistake"] == CONTROLS[family][2]
    assert not torch.equal(wrong["logits"], ref["logits"][1:])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_pull_moves_the_cache_once(transformers_run: Callable[[str], Run], transport: str) -> None:
    """Every job reported; without replicas a pull moves exactly the cache's bytes, no more.

    At D TP 4 ranks share KV heads and B/C groups, so each holds (and reads) its own copy.
    ``pytest -s`` prints the matrix with its timings.
    """
    run = transformers_run(transport)
    families = _families(transport)
    assert set(run.done) == {(f, p, d) for f in families for p, d in PAIRS}
    print(f"\n{transport}: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.phases.items()))
    for family in families:
        size = sum(t.numel() * t.element_size() for t in _load(run.out / f"{family}.cache.pt").values())
        moved = {(p, d): run.done[family, p, d]["bytes"] for p, d in PAIRS}
        assert moved[1, 1] == moved[2, 1] == size and size <= moved[1, 2] <= moved[1, 4]
        print(f"  {family:17}" + "".join(
            f"  P{p}->D{d} {moved[p, d]:6d} B {run.done[family, p, d]['pull_seconds'] * 1e3:5.0f} ms"
            for p, d in PAIRS))

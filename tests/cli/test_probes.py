"""Each command-line probe a new user tried, and what it must now say: one test per probe.

serve/pull tell the truth about what is served; every size is bounded before anything is
allocated; failures are one line (and a JSON object under ``--json``); no traceback and no
hang on any input. Processes are real ``hybridxfer`` processes on loopback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hybridxfer.cli._metadata import fetch_metadata, parse_endpoint
from tests.cli._serving import Served, serving
from tests.cli.conftest import NEMOTRON, REPO, cli_argv, run_cli, run_process

MODEL = "nemotron-3-nano-30b-a3b"
D_RANK = ("--src-tp", "1", "--dst-tp", "2", "--rank", "1")


@pytest.fixture(scope="module")
def served_512(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One P rank serving one request of 512 tokens."""
    with serving(tmp_path_factory.mktemp("serve512"), MODEL, "--tp", "1", "--rank", "0", "--tokens", "512",
                 verbose=True) as s:
        yield s


def _one_error_line(stderr: str, prefix: str = "error: ") -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


# -- item 3: serve/pull tell the truth ------------------------------------------------------------------------


def test_serve_without_tokens_then_pull_4096_names_both_counts(tmp_path: Path) -> None:
    """Was: ``mismatch: region 'kv_cache.5': ... bytes diff`` (an argument mismatch shown as corruption)."""
    with serving(tmp_path, NEMOTRON, "--tp", "1", "--rank", "0") as s:  # default --tokens 8192
        result = run_process("pull", NEMOTRON, *D_RANK, "--connect", s.address, "--tokens", "4096")
    line = _one_error_line(result.stderr, "hybridxfer pull: error: ")
    assert result.returncode == 2 and result.stdout == ""
    assert "--tokens 4096 does not match what P serves: 1 request of 8192 tokens (r0)" in line
    assert "mismatch" not in result.stderr.replace("does not match", "")


def test_pull_ten_million_tokens_is_refused_before_allocating(served_512: Served) -> None:
    """Was: OOM-killed at 24 GB. Now refused with both counts, and the process stayed small."""
    # run pull under a fresh parent, so that RUSAGE_CHILDREN is the peak of that pull alone
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.stderr.write(r.stderr)")
    result = subprocess.run([sys.executable, "-c", measure, *cli_argv("pull", MODEL, *D_RANK, "--connect",
                                                                     served_512.address, "--tokens", "10000000")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    status, peak_kib = map(int, result.stdout.split())
    line = _one_error_line(result.stderr, "hybridxfer pull: error: ")
    assert status == 2
    assert "--tokens 10000000" in line and "1 request of 512 tokens" in line
    # D's memory for 10M tokens is tens of GB; the refused pull never grew past a few hundred MB
    assert peak_kib < 1 << 20


def test_pull_1024_against_512_is_refused_not_verified(served_512: Served) -> None:
    """Was: ``verified`` (the puller checked the wrong image against the wrong blocks)."""
    result = run_process("pull", MODEL, *D_RANK, "--connect", served_512.address, "--tokens", "1024")
    assert result.returncode == 2 and "verified" not in result.stdout
    assert "--tokens 1024 does not match what P serves: 1 request of 512 tokens" in _one_error_line(
        result.stderr, "hybridxfer pull: error: ")


def test_pull_without_tokens_takes_what_p_serves(served_512: Served) -> None:
    result = run_process("pull", MODEL, *D_RANK, "--connect", served_512.address, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is True and doc["tokens"] == 512 and doc["requests"] == 1 and doc["mismatches"] == []


def test_pull_more_requests_than_served_is_refused(served_512: Served) -> None:
    result = run_process("pull", MODEL, *D_RANK, "--connect", served_512.address, "--requests", "3")
    assert result.returncode == 2
    assert "--requests 3 is more than P serves: 1 request of 512 tokens (r0)" in result.stderr


def test_pull_timeout_against_a_stopped_serve_is_one_line() -> None:
    """Was: a raw ``TimeoutError`` traceback after 31 s (the metadata retries ignored --timeout)."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_process("pull", MODEL, *D_RANK, "--connect", f"127.0.0.1:{port}", "--timeout", "3", timeout=30)
    line = _one_error_line(result.stderr)
    assert result.returncode == 1
    assert line.startswith(f"error: cannot reach hybridxfer serve at 127.0.0.1:{port} within ")


def test_pull_timeout_against_a_silent_listener_is_one_line() -> None:
    """A listener that accepts and never answers: the same --timeout ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_process("pull", MODEL, *D_RANK, "--connect", f"127.0.0.1:{port}", "--timeout", "2",
                             "--json", timeout=30)
    assert result.returncode == 1
    _one_error_line(result.stderr)
    error = json.loads(result.stdout)["error"]
    assert error["type"] in ("TransferTimeout", "ConnectError") and "2" in error["message"]


def test_pull_names_a_model_mismatch_by_id(served_512: Served) -> None:
    other = str(REPO / "layouts" / "nemotron-h-8b.toml")
    result = run_process("pull", other, *D_RANK, "--connect", served_512.address)
    assert result.returncode == 1
    assert _one_error_line(result.stderr) == (
        "error: P rank 0 serves model 'nemotron-3-nano-30b-a3b'; this pull's layout is model 'nemotron-h-8b'")


def test_pull_names_same_id_other_dimensions_with_digests(served_512: Served, tmp_path: Path) -> None:
    changed = tmp_path / "other-dims.toml"
    changed.write_text(Path(NEMOTRON).read_text().replace("d_state = 128", "d_state = 64"))
    result = run_process("pull", str(changed), *D_RANK, "--connect", served_512.address)
    line = _one_error_line(result.stderr)
    assert result.returncode == 1
    assert re.search(r"serves model 'nemotron-3-nano-30b-a3b' with other dimensions or dtypes "
                     r"\(model digest \w+ vs \w+\)", line), line


# -- item 4: bounded input -------------------------------------------------------------------------------------


def _with(tmp_path: Path, old: str, new: str) -> str:
    path = tmp_path / "edited.toml"
    text = Path(NEMOTRON).read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize("value", ["100000000000000000000", "1000000000"])
def test_layout_check_refuses_absurd_d_state(capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str) -> None:
    """Was: ``ok``, then ``plan``/``serve`` died with OverflowError (1e20) or hung (1e9)."""
    path = _with(tmp_path, "d_state = 128 ", f"d_state = {value} ")
    code, out, err = run_cli(capsys, "layout", "check", path)
    assert code == 1 and out == ""
    assert err.strip() == f"{path}:25: specs.mamba.d_state: d_state must be at most 1,048,576, got {int(value):,}"
    for argv in (["plan", path, "--src-tp", "1", "--dst-tp", "1", "--tokens", "16"],
                 ["serve", path, "--tp", "1", "--listen", "127.0.0.1:0"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "d_state must be at most 1,048,576" in _one_error_line(err)


def test_layout_check_refuses_a_page_above_four_gib(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Each dimension in bounds, their product not: 1M KV heads make a 8 GB block."""
    path = _with(tmp_path, "num_kv_heads = 2 ", "num_kv_heads = 1000000 ")
    code, _, err = run_cli(capsys, "layout", "check", path)
    assert code == 1
    assert "specs.attention: one block holds 8,192,000,000 bytes (16 tokens of K/V at TP 1); " \
           "the most a page may hold is 4,294,967,296" in err


def test_layout_check_accepts_every_shipped_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """The negative control of the bounds: every real model is far inside them."""
    files = sorted(str(p) for p in (REPO / "layouts").glob("*.toml"))
    code, out, err = run_cli(capsys, "layout", "check", *files)
    assert code == 0 and err == "" and out.count(": ok\n") == len(files) >= 10


@pytest.mark.parametrize("tokens", ["100000000000", "16777217"])
def test_plan_refuses_huge_tokens_at_once(capsys: pytest.CaptureFixture[str], tokens: str) -> None:
    """Was: ``plan --tokens 1e11`` hung building a block table of 95 million entries."""
    code, _, err = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--tokens", tokens)
    assert code == 2
    assert _one_error_line(err, "hybridxfer plan: error: ") == \
        "hybridxfer plan: error: --tokens must lie in [1, 16777216]"


def test_plan_at_the_token_bound_finishes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "2", "--tokens", "16777216", "--json")
    assert code == 0 and json.loads(out)["tokens"] == 16777216


@pytest.mark.parametrize(("spec", "fragment"), [
    ("attention.0=0-100000000000,mamba.0=1", "block ID 100000000000 is above the largest allowed, 2147483647"),
    ("attention.0=0-2000000,mamba.0=1", "more than 1,048,576 block IDs on one side"),
])
def test_plan_blocks_refuses_huge_ranges(capsys: pytest.CaptureFixture[str], spec: str, fragment: str) -> None:
    code, _, err = run_cli(capsys, "plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--blocks", spec)
    assert code == 2 and fragment in _one_error_line(err, "hybridxfer plan: error: ")


def test_serve_checks_memory_before_allocating(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0",
                             "--tokens", "16777216", "--requests", "4096")
    line = _one_error_line(err)
    assert code == 1 and out == ""  # not even the "listening on" line: nothing was opened
    assert re.fullmatch(r"error: serving 4096 x 16777216 tokens of nemotron-3-nano-30b-a3b on P ranks \[0\] needs "
                        r"about [\d,.]+ TiB of memory; [\d,.]+ (TiB|GiB|MiB|B) is available "
                        r"\(use fewer --tokens or --requests\)", line), line


def test_memory_check_compares_need_and_available() -> None:
    from hybridxfer.cli._limits import InsufficientMemoryError, check_memory, working_set

    check_memory(working_set(1 << 30, 1), "x", available=3 << 30)  # 3 GiB needed, 3 GiB free: fits
    with pytest.raises(InsufficientMemoryError, match=r"^x needs about 3.0 GiB of memory; 3.0 GiB is available"):
        check_memory(working_set(1 << 30, 1) + 1, "x", available=3 << 30)


def test_demo_checks_memory_before_starting_processes(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "demo", "--tokens", "16777216", "--requests", "4096")
    assert code == 1 and "demo of 4096 x 16777216 tokens on 1 P + 2 D ranks needs about" in _one_error_line(err)


# -- item 5: output --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "status", "kind"), [
    (["plan", "no-such.toml", "--src-tp", "1", "--dst-tp", "1", "--tokens", "16", "--json"], 1, "LayoutError"),
    (["plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--tokens", "0", "--json"], 2, "UsageError"),
    (["plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--json"], 2, "UsageError"),  # argparse's own
    (["layout", "show", "no-such-model", "--tp", "1", "--json"], 1, "LayoutError"),
    (["demo", "--tokens", "0", "--json"], 2, "UsageError"),
])
def test_json_failure_prints_an_error_object(capsys: pytest.CaptureFixture[str], argv: list[str], status: int,
                                             kind: str) -> None:
    """Was: ``--json`` printed nothing on failure."""
    code, out, err = run_cli(capsys, *argv)
    assert code == status and "Traceback" not in err
    doc = json.loads(out)
    assert set(doc) == {"error"} and doc["error"]["type"] == kind and doc["error"]["exit_status"] == status
    assert doc["error"]["message"] and doc["error"]["message"] in err


def test_json_layout_error_lists_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _with(tmp_path, "d_state = 128 ", "d_state = 0 ")
    code, out, _ = run_cli(capsys, "layout", "show", path, "--tp", "1", "--json")
    error = json.loads(out)["error"]
    assert code == 1 and error["type"] == "LayoutError"
    assert error["problems"] == [{"file": path, "line": 25, "path": "specs.mamba.d_state",
                                  "message": "d_state must be a positive integer, got 0"}]


def test_serve_first_line_is_the_metadata_address(served_512: Served) -> None:
    """Was: with -v the first ``listening on`` line was the transport's port."""
    assert served_512.first_lines[0] == f"listening on {served_512.address}"
    assert served_512.first_lines[-1].startswith("serving nemotron-3-nano-30b-a3b P ranks [0] of TP 1: 1 x 512 tokens")
    log = served_512.stderr_text()  # -v: the transport logs its own (other) port, after
    transport = re.search(r"tcp transport serve-p0 listening on (\S+)", log)
    assert transport and transport.group(1) != served_512.address
    [rank] = anyio.run(fetch_metadata, parse_endpoint(served_512.address), b"")
    assert rank.rank == 0 and [(q.id, q.tokens) for q in rank.requests] == [("r0", 512)]


def test_serve_logs_refused_authentication_without_the_secret(tmp_path: Path) -> None:
    secret, wrong = "s3cret-value-1234", "wrong-value-5678"
    env = {**_env(), "HYBRIDXFER_SECRET": secret}
    with serving(tmp_path, MODEL, "--tp", "1", "--tokens", "64", env=env) as s:
        result = subprocess.run(
            [*_cli(), "pull", MODEL, *D_RANK, "--connect", s.address, "--timeout", "20"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env={**_env(), "HYBRIDXFER_SECRET": wrong})
        refused = _wait_for(s, "refused")
    assert result.returncode == 1 and "authentication failed" in _one_error_line(result.stderr)
    assert re.search(r"WARNING hybridxfer.cli: metadata request from 127\.0\.0\.1:\d+ refused: "
                     r"authentication failed \(wrong secret\)", refused), refused
    assert secret not in refused and wrong not in refused


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HYBRIDXFER_SECRET"}


def _cli() -> list[str]:
    return [sys.executable, "-m", "hybridxfer.cli"]


def _wait_for(s: Served, word: str) -> str:
    """serve's stderr once it holds ``word`` (the log line is written before pull's error returns)."""
    for _ in range(200):
        text = s.stderr_text()
        if word in text:
            return text
        time.sleep(0.05)
    return s.stderr_text()


def test_max_pulls_zero_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ``--max-pulls 0`` served forever."""
    code, _, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0", "--max-pulls", "0")
    assert code == 2 and _one_error_line(err, "hybridxfer serve: error: ") == \
        "hybridxfer serve: error: --max-pulls must be >= 1 (leave it out to serve until interrupted)"


@pytest.mark.parametrize(("command", "options"), [
    ("serve", ["--tp"]), ("pull", ["--src-tp", "--dst-tp", "--rank"]), ("plan", ["--src-tp", "--dst-tp", "--dst-rank"]),
    ("demo", ["--src-tp", "--dst-tp"]),
])
def test_tp_options_have_help(capsys: pytest.CaptureFixture[str], command: str, options: list[str]) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    flat = re.sub(r"\s+", " ", out.partition("options:")[2])
    for option in options:
        described = re.search(rf" {option} [A-Z]+ (\S.*?)(?= -[-a-z]|$)", flat)
        assert described, f"{command} {option} has no help text"
        assert "TP" in described.group(1) or "rank" in described.group(1), described.group(1)


def test_bench_help_speaks_of_the_product() -> None:
    result = run_process("bench", "--help")
    assert result.returncode == 0 and "bench" in result.stdout
    assert not re.search(r"\bissue\b|\bsession\b|\bhelper\b", result.stdout + result.stderr, re.IGNORECASE)


def test_from_hf_does_not_take_model_type_as_the_id(tmp_path: Path) -> None:
    """Was: a config without ``_name_or_path`` became model ``nemotron_h`` (every Nemotron-H size)."""
    config = tmp_path / "config.json"
    config.write_text((REPO / "tests" / "hf" / "configs" / "nemotron-h-8b.json").read_text())
    refused = run_process("layout", "from-hf", str(config))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "pass --model-id (model_type 'nemotron_h' names the architecture family, not the model)" in \
        _one_error_line(refused.stderr, "hybridxfer layout from-hf: error: ")
    cached = tmp_path / "models--nvidia--Nemotron-H-8B-Base-8K" / "snapshots" / "0123abc" / "config.json"
    cached.parent.mkdir(parents=True)
    cached.write_text(config.read_text())
    derived = run_process("layout", "from-hf", str(cached))
    assert derived.returncode == 0 and 'id = "nemotron-h-8b-base-8k"' in derived.stdout
    assert derived.stderr.strip() == ("model id 'nemotron-h-8b-base-8k' (from the Hugging Face cache path "
                                      "'models--nvidia--Nemotron-H-8B-Base-8K'; --model-id sets another)")


# -- no traceback, on any input --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["layout", "check", "/"], ["layout", "show", NEMOTRON, "--tp", "3"], ["layout", "expand", "/dev/null"],
    ["plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--blocks", "attention.0=0"],
    ["plan", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--tokens", "16", "--svg", "/no/such/dir/x.svg"],
    ["serve", NEMOTRON, "--tp", "1", "--listen", "nonsense"], ["serve", NEMOTRON, "--tp", "1", "--listen", "1.2.3.4:99999"],
    ["serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0", "--secret-file", "/no/such/secret"],
    ["serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0", "--transport", "no-such-transport"],
    ["pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0", "--connect", "127.0.0.1:1", "--timeout", "-1"],
    ["pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "5", "--connect", "127.0.0.1:1"],
    ["demo", "--layout", "no-such-model"], ["layout", "from-hf", "/no/such/config.json", "--model-id", "x"],
])
def test_no_traceback_on_bad_input(argv: list[str]) -> None:
    result = run_process(*argv, timeout=60)
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    first = result.stderr.splitlines()[0]
    if argv[:2] == ["layout", "check"]:  # check lists problems as file: path: reason
        assert first.startswith(f"{argv[2]}: ")
    else:
        assert re.match(r"(error|hybridxfer( [a-z-]+)*): ", first) or first.startswith("usage: "), first


def test_serve_on_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", f"127.0.0.1:{port}",
                                 "--tokens", "16")
    assert code == 1 and out == ""
    assert _one_error_line(err).startswith(f"error: --listen: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.parametrize(("argv", "message"), [
    (["layout", "show", "llama-3.1-8b", "--tp", "1048576"], "hybridxfer layout: error: --tp must lie in [1, 1024], got 1048576"),
    (["plan", "llama-3.1-8b", "--src-tp", "65536", "--dst-tp", "1", "--tokens", "16"],
     "hybridxfer plan: error: --src-tp must lie in [1, 1024], got 65536"),
    (["serve", "llama-3.1-8b", "--tp", "5000", "--listen", "127.0.0.1:0"],
     "hybridxfer serve: error: --tp must lie in [1, 1024], got 5000"),
    (["pull", "llama-3.1-8b", "--src-tp", "1", "--dst-tp", "5000", "--rank", "0", "--connect", "127.0.0.1:1"],
     "hybridxfer pull: error: --dst-tp must lie in [1, 1024], got 5000"),
    (["demo", "--dst-tp", "100"],
     "hybridxfer demo: error: --src-tp and --dst-tp must be >= 1, and at most 64 together (one process per rank)"),
])
def test_huge_tp_is_refused_at_once(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """A pure-attention layout replicates KV heads over any multiple of their count, so
    ``--tp 1048576`` was valid and resolved a million ranks (a hang)."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and _one_error_line(err, "hybridxfer ") == message

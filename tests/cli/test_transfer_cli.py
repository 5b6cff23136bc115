"""``serve``/``pull`` across processes, the metadata side channel, and ``demo`` end to end."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator

import anyio
import pytest

from hybridxfer.cli._metadata import Endpoint, RankMetadata, fetch_metadata, serve_metadata
from hybridxfer.cli._progress import ProgressBar
from hybridxfer.errors import AuthenticationError
from tests.cli.conftest import NEMOTRON, REPO, cli_argv, run_cli, run_process

TOKENS = "300"


@pytest.fixture
def served() -> Iterator[str]:
    """Every rank of a P TP-2 engine in one ``serve`` process; yields its metadata address."""
    process = subprocess.Popen(cli_argv("serve", NEMOTRON, "--tp", "2", "--listen", "127.0.0.1:0",
                                        "--tokens", TOKENS, "--requests", "2"),
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        address = ""
        for line in process.stdout:
            if line.startswith("listening on "):
                address = line.split()[-1]
                break
        assert address, "serve exited before listening"
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_and_pull_across_processes(served: str) -> None:
    fan_in = run_process("pull", NEMOTRON, "--src-tp", "2", "--dst-tp", "1", "--rank", "0", "--connect", served,
                         "--tokens", TOKENS, "--requests", "2", "--json")
    assert fan_in.returncode == 0, fan_in.stderr
    doc = json.loads(fan_in.stdout)
    assert doc["verified"] is True and doc["src_ranks"] == [0, 1] and doc["requests"] == 2
    assert {"bytes", "descriptors", "seconds", "gbps", "bytes_by_kind", "padding_bytes_skipped"} <= set(doc)
    text = run_process("pull", NEMOTRON, "--src-tp", "2", "--dst-tp", "4", "--rank", "3", "--connect", served,
                       "--tokens", TOKENS)
    assert text.returncode == 0, text.stderr
    assert "verified" in text.stdout and "GB/s" in text.stdout


def test_pull_refuses_wrong_tp(served: str) -> None:
    result = run_process("pull", NEMOTRON, "--src-tp", "4", "--dst-tp", "1", "--rank", "0", "--connect", served,
                         "--tokens", TOKENS)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_serve_refuses_public_address_without_secret(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRIDXFER_SECRET", raising=False)
    code, _, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", "0.0.0.0:0")
    assert code == 1 and "secret" in err


def test_metadata_channel_checks_the_secret() -> None:
    async def scenario() -> None:
        ranks = [RankMetadata(0, 1, b"blob")]
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(serve_metadata, listener, ranks, b"s3cret")
            assert await fetch_metadata(Endpoint("127.0.0.1", port), b"s3cret") == ranks
            with pytest.raises(AuthenticationError):
                await fetch_metadata(Endpoint("127.0.0.1", port), b"wrong")
            with pytest.raises(AuthenticationError):
                await fetch_metadata(Endpoint("127.0.0.1", port), b"")
            tg.cancel_scope.cancel()

    anyio.run(scenario)


def test_demo_end_to_end_json() -> None:
    result = run_process("demo", "--tokens", "256", "--requests", "2", "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is True
    assert {"bytes", "verified", "seconds", "ranks"} <= set(doc)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    assert doc["bytes"] == sum(r["bytes"] for r in doc["ranks"]) > 0
    for rank in doc["ranks"]:
        assert rank["verified"] and rank["src_ranks"] == [0] and rank["requests"] == 2
        assert set(rank["bytes_by_kind"]) == {"attention", "mamba2"}
        assert rank["padding_bytes_skipped"] > 0 and rank["descriptors"] > 0


def test_progress_bar_draws_on_request() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, enabled=True)
    bar.update(50, 100, "transferring", force=True)
    bar.close()
    assert "50%" in stream.getvalue() and "transferring" in stream.getvalue()
    quiet = io.StringIO()
    ProgressBar(quiet).update(1, 2, "x", force=True)  # not a TTY: draws nothing
    assert quiet.getvalue() == ""


def test_bench_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", "--help")
    assert code in (0, 2)
    assert "bench" in out + err

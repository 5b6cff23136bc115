"""``serve --etcd`` / ``pull --etcd`` through a real etcd server, as a user runs them.

Why the ``--events`` mode of pull: it stops after planning (the guards already hold) and
waits for a line on stdin before transferring, so the test can stop or kill P at exactly
that point — during the pull — without any timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests._etcd import EtcdServer, etcd
from tests.cli.conftest import NEMOTRON, REPO, cli_argv, run_process

__all__ = ["etcd"]  # the fixture, imported for this module

TOKENS = "300"
NAME = "nano-etcd"


@pytest.fixture
def served(etcd: EtcdServer) -> Iterator[subprocess.Popen[str]]:
    """A P TP-2 ``serve`` published in etcd as ``nano-etcd-p0`` / ``-p1`` with a 2 s lease."""
    process = subprocess.Popen(cli_argv("serve", NEMOTRON, "--tp", "2", "--listen", "127.0.0.1:0", "--tokens", TOKENS,
                                        "--etcd", etcd.url, "--name", NAME, "--etcd-ttl", "2"),
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        published = []
        for line in process.stdout:
            if line.startswith("published "):
                published.append(line.split()[1])
            if line.startswith("serving "):
                break
        assert published == [f"{NAME}-p0", f"{NAME}-p1"], published
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def test_pull_finds_serve_through_etcd(served: subprocess.Popen[str], etcd: EtcdServer) -> None:
    done = run_process("pull", NEMOTRON, "--src-tp", "2", "--dst-tp", "1", "--rank", "0", "--etcd", etcd.url,
                       "--name", NAME, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["verified"] is True and doc["src_ranks"] == [0, 1]


def test_pull_needs_exactly_one_of_connect_and_etcd(etcd: EtcdServer) -> None:
    both = run_process("pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0",
                       "--connect", "127.0.0.1:1", "--etcd", etcd.url)
    neither = run_process("pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0")
    for result in (both, neither):
        assert result.returncode == 2
        assert "exactly one of --connect" in result.stderr and "Traceback" not in result.stderr


def test_pull_of_an_unpublished_name_fails_within_its_timeout(etcd: EtcdServer) -> None:
    result = run_process("pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0", "--etcd", etcd.url,
                         "--name", "nobody", "--timeout", "1")
    assert result.returncode == 1
    assert "nobody-p0" in result.stderr and "Traceback" not in result.stderr


def _pull_then(served: subprocess.Popen[str], etcd: EtcdServer, fault: signal.Signals) -> tuple[int, str]:
    """Start a pull, hit P with ``fault`` once the pull is planned and guarded, let it transfer."""
    pull = subprocess.Popen(cli_argv("pull", NEMOTRON, "--src-tp", "2", "--dst-tp", "1", "--rank", "0",
                                     "--etcd", etcd.url, "--name", NAME, "--events", "--timeout", "600"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert pull.stdout is not None and pull.stdin is not None
        for line in pull.stdout:
            if line.strip() == "EV ready":
                break
        else:
            raise AssertionError(f"pull never got ready: {pull.communicate(timeout=30)[1]}")
        os.kill(served.pid, fault)
        pull.stdin.write("go\n")
        pull.stdin.flush()
        _, err = pull.communicate(timeout=120)  # bounded: far below the pull's own --timeout
        return pull.returncode, err
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait(timeout=30)


def test_a_hung_p_ends_the_pull_when_its_lease_expires(served: subprocess.Popen[str], etcd: EtcdServer) -> None:
    """SIGSTOP: P's sockets stay open and silent; only the directory can tell it is gone."""
    code, err = _pull_then(served, etcd, signal.SIGSTOP)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{NAME}-p" in lines[0] and "is gone" in lines[0] and "lease expired" in lines[0], lines[0]


def test_a_killed_p_ends_the_pull_with_one_line(served: subprocess.Popen[str], etcd: EtcdServer) -> None:
    code, err = _pull_then(served, etcd, signal.SIGKILL)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err

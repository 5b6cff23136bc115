"""Cluster discovery through etcd: a prefill agent publishes itself, a decoder finds it,
and a pull that depends on it fails at once when the prefill worker goes away.

Run it as a script: it starts a throw-away etcd on loopback (Debian package ``etcd-server``)
unless ``HYBRIDXFER_ETCD`` names one that is already running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import anyio

from hybridxfer.discovery import PeerDirectory, PeerRecord, new_incarnation
from hybridxfer.errors import PeerGoneError


async def prefill_worker(url: str, record: PeerRecord, stop: anyio.Event) -> None:
    """Publish where this worker's metadata channel listens, under a 2 s lease, until stopped."""
    async with PeerDirectory(url, namespace="docs-example", ttl_s=2) as directory:
        await directory.publish(record)
        await stop.wait()           # serving; leaving the block withdraws (a crash: the lease expires)


async def main(url: str) -> None:
    prefill = PeerRecord(name="prefill-0", address="127.0.0.1:7000", incarnation=new_incarnation(),
                         model_id="nemotron-3-nano-30b-a3b", role="prefill", tp_size=1, tp_rank=0)
    stop = anyio.Event()
    async with anyio.create_task_group() as workers, PeerDirectory(url, namespace="docs-example") as directory:
        workers.start_soon(prefill_worker, url, prefill, stop)

        # The decode side finds the prefill worker by name ...
        found = await directory.wait_for("prefill-0", timeout_s=5)
        assert found == prefill
        print(f"found {found.name} at {found.address} (incarnation {found.incarnation})")

        # ... and runs its pull under a guard: when the worker goes, the pull fails at once.
        try:
            async with directory.guard(found):
                stop.set()                                  # the prefill worker goes away
                with anyio.fail_after(30):                  # the pull's own deadline, never reached
                    await anyio.sleep_forever()             # stands for `await plan.execute()`
        except PeerGoneError as exc:
            print(f"pull failed fast: {exc}")
        else:
            raise AssertionError("the guard did not notice that the peer left")


def _local_etcd(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    client, peer = (f"http://127.0.0.1:{p}" for p in ports)
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("this example needs an etcd server: apt-get install etcd-server")
    process = subprocess.Popen([binary, "--data-dir", os.path.join(workdir, "etcd"), "--listen-client-urls", client,
                                "--advertise-client-urls", client, "--listen-peer-urls", peer,
                                "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", ports[0]), timeout=0.2).close()
            return process, client
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the local etcd did not start")


if __name__ == "__main__":
    if url := os.environ.get("HYBRIDXFER_ETCD", ""):
        anyio.run(main, url)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            etcd, url = _local_etcd(workdir)
            try:
                anyio.run(main, url)
            finally:
                etcd.terminate()
                etcd.wait(timeout=10)

"""The etcd directory against a real etcd server: publish, watch, leases that expire when a
peer dies, restarts seen as other incarnations, and bounded, typed failures."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import anyio
import anyio.abc
import pytest

from hybridxfer.discovery import EtcdClient, PeerDirectory, PeerRecord, new_incarnation
from hybridxfer.errors import ConnectError, NotStartedError, PeerGoneError, ProtocolError
from tests.discovery.conftest import EtcdServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _record(name: str = "prefill-0", incarnation: str | None = None) -> PeerRecord:
    return PeerRecord(name=name, address="127.0.0.1:40123", incarnation=incarnation or new_incarnation(),
                      model_id="nemotron-3-nano-30b-a3b", role="prefill", tp_size=2, tp_rank=1)


_PUBLISHER = textwrap.dedent("""
    import sys, anyio
    from hybridxfer.discovery import PeerDirectory, PeerRecord
    async def main() -> None:
        url, namespace, name, incarnation = sys.argv[1:5]
        async with PeerDirectory(url, namespace=namespace, ttl_s=2) as directory:
            await directory.publish(PeerRecord(name, "127.0.0.1:1", incarnation, "m"))
            print("published", flush=True)
            await anyio.sleep_forever()
    anyio.run(main)
""")


class Publisher:
    """A peer in its own process: publishes, then lives until killed."""

    def __init__(self, etcd: EtcdServer, namespace: str, name: str, incarnation: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _PUBLISHER, etcd.url, namespace, name, incarnation],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "published"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


async def test_a_published_record_round_trips_and_goes_when_the_directory_closes(etcd: EtcdServer) -> None:
    record = _record()
    async with PeerDirectory(etcd.url, namespace="t1") as reader:
        async with PeerDirectory(etcd.url, namespace="t1") as publisher:
            await publisher.publish(record)
            assert await reader.peers() == (record,)
        assert await reader.peers() == ()          # revoked at close, not left to the TTL


async def test_namespaces_do_not_see_each_other(etcd: EtcdServer) -> None:
    async with PeerDirectory(etcd.url, namespace="t2a") as a, PeerDirectory(etcd.url, namespace="t2b") as b:
        await a.publish(_record("p"))
        assert [r.name for r in await a.peers()] == ["p"]
        assert await b.peers() == ()


async def test_the_lease_is_kept_alive_past_its_ttl(etcd: EtcdServer) -> None:
    record = _record()
    async with PeerDirectory(etcd.url, namespace="t3", ttl_s=2) as directory:
        await directory.publish(record)
        await anyio.sleep(4.5)                     # more than two TTLs: only keep-alives hold it
        assert await directory.peers() == (record,)


async def test_a_killed_peer_drops_out_and_watchers_see_it(etcd: EtcdServer) -> None:
    incarnation = new_incarnation()
    publisher = Publisher(etcd, "t4", "prefill-7", incarnation)
    async with PeerDirectory(etcd.url, namespace="t4") as directory:
        async with directory.watch() as events:
            first = await events.__anext__()
            assert (first.name, first.up) == ("prefill-7", True)
            assert first.record is not None and first.record.incarnation == incarnation
            publisher.kill()
            with anyio.fail_after(20):
                gone = await events.__anext__()
        assert (gone.name, gone.up, gone.record) == ("prefill-7", False, None)
        assert await directory.peers() == ()


async def test_a_pending_pull_fails_fast_when_its_peer_dies(etcd: EtcdServer) -> None:
    publisher = Publisher(etcd, "t5", "prefill-0", incarnation := new_incarnation())
    async with PeerDirectory(etcd.url, namespace="t5") as directory:
        record = await directory.wait_for("prefill-0", timeout_s=5)
        assert record.incarnation == incarnation
        reached_end = False
        with pytest.raises(PeerGoneError, match=f"prefill-0.*{incarnation}.*lease expired"):
            async with directory.guard(record):
                publisher.kill()
                with anyio.fail_after(60):             # the pull's own deadline: never reached
                    await anyio.sleep_forever()
                reached_end = True
        assert not reached_end


async def test_a_restarted_peer_is_another_incarnation(etcd: EtcdServer) -> None:
    old, new = new_incarnation(), new_incarnation()
    async with PeerDirectory(etcd.url, namespace="t6") as p1, PeerDirectory(etcd.url, namespace="t6") as d:
        await p1.publish(_record(incarnation=old))
        record = await d.wait_for("prefill-0", timeout_s=5)
        with pytest.raises(PeerGoneError) as caught:
            async with d.guard(record):
                async with PeerDirectory(etcd.url, namespace="t6") as p2:
                    await p2.publish(_record(incarnation=new))
                    with anyio.fail_after(30):
                        await anyio.sleep_forever()
        assert old in str(caught.value) and new in str(caught.value)


async def test_a_guarded_block_that_finishes_is_not_an_error(etcd: EtcdServer) -> None:
    async with PeerDirectory(etcd.url, namespace="t7") as directory:
        record = _record()
        await directory.publish(record)
        async with directory.guard(record):
            await anyio.sleep(0.1)
        assert await directory.peers() == (record,)


async def test_wait_for_sees_a_peer_that_appears_later_and_times_out_on_one_that_never_does(
        etcd: EtcdServer) -> None:
    async with PeerDirectory(etcd.url, namespace="t8") as directory:
        async def publish_late() -> None:
            await anyio.sleep(0.5)
            await directory.publish(_record("late"))

        async with anyio.create_task_group() as group:
            group.start_soon(publish_late)
            assert (await directory.wait_for("late", timeout_s=10)).name == "late"
        with pytest.raises(ConnectError, match="no peer 'never' published .* within 0.5 s"):
            await directory.wait_for("never", timeout_s=0.5)


async def test_a_malformed_record_is_a_protocol_error_naming_its_key(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    await client.put(b"/t9/peers/bad", b'{"version": 1, "name": "bad"}')
    async with PeerDirectory(etcd.url, namespace="t9") as directory:
        with pytest.raises(ProtocolError, match="/t9/peers/bad"):
            await directory.peers()
    await client.put(b"/t9/peers/bad", b'{"version": 99}')
    async with PeerDirectory(etcd.url, namespace="t9") as directory:
        with pytest.raises(ProtocolError, match="version 99"):
            await directory.peers()


async def test_publish_before_entering_is_refused() -> None:
    with pytest.raises(NotStartedError):
        await PeerDirectory("http://127.0.0.1:9").publish(_record())


async def test_an_unreachable_etcd_is_a_connect_error_naming_it() -> None:
    with socket_port() as port:
        async with PeerDirectory(f"http://127.0.0.1:{port}", timeout_s=2) as directory:
            with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
                await directory.peers()


@pytest.mark.parametrize("url", ["https://127.0.0.1:2379", "127.0.0.1", "http://host:port", "http://h:1/x"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConnectError, match="etcd"):
        PeerDirectory(url)


async def test_a_server_that_is_not_etcd_is_a_protocol_error() -> None:
    async def not_http(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"SSH-2.0-OpenSSH\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, not_http)
        with pytest.raises(ProtocolError, match="not an HTTP reply"):
            await EtcdClient(f"http://127.0.0.1:{port}", timeout_s=5).get_prefix(b"/x")
        group.cancel_scope.cancel()


async def test_a_server_that_never_answers_is_bounded_by_the_timeout() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, silent)
        with pytest.raises(ConnectError, match="no reply within 0.5 s"):
            await EtcdClient(f"http://127.0.0.1:{port}", timeout_s=0.5).get_prefix(b"/x")
        group.cancel_scope.cancel()


class socket_port:
    """A loopback port that nothing listens on (bound, not listening, for the test's duration)."""

    def __enter__(self) -> int:
        import socket
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_an_error_of_the_guarded_block_passes_through_unchanged(etcd: EtcdServer) -> None:
    async with PeerDirectory(etcd.url, namespace="t10") as directory:
        record = _record()
        await directory.publish(record)
        with pytest.raises(KeyError, match="the pull's own error"):
            async with directory.guard(record):
                raise KeyError("the pull's own error")


async def test_a_peer_gone_before_the_guard_starts_watching_is_noticed(etcd: EtcdServer) -> None:
    async with PeerDirectory(etcd.url, namespace="t11") as directory:
        with pytest.raises(PeerGoneError, match="withdrew"):
            async with directory.guard(_record("never-published")):
                with anyio.fail_after(30):
                    await anyio.sleep_forever()


async def test_a_directory_outage_leaves_the_guarded_block_to_its_own_deadline() -> None:
    with socket_port() as port:
        async with PeerDirectory(f"http://127.0.0.1:{port}", timeout_s=1) as directory:
            async with directory.guard(_record()):
                await anyio.sleep(0.3)                  # completes: no PeerGoneError without evidence

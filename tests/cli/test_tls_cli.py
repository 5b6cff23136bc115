"""TLS for ``serve``/``pull``/``demo`` and the metadata channel; the channel's size caps.

The metadata channel is tested in-process against real sockets (``serve_metadata`` /
``fetch_metadata``); the commands as real processes: ``serve`` and ``pull`` over TLS
verify every byte, a puller with a certificate of another CA gets nothing, and bad flag
combinations or files are one typed ``error:`` line each — never a traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import anyio.abc
import pytest

from hybridxfer.cli._metadata import (
    MAX_LINE_BYTES,
    Endpoint,
    RankMetadata,
    ServedRequest,
    fetch_metadata,
    serve_metadata,
)
from hybridxfer.errors import AuthenticationError, ProtocolError
from hybridxfer.transport import TlsConfig
from tests._pki import Pki, pki
from tests.cli._serving import serving
from tests.cli.conftest import NEMOTRON, run_cli, run_process

__all__ = ["pki"]

RANKS = [RankMetadata(0, 1, b"agent-blob", (ServedRequest("r0", 64),), "m", "digest")]


def _flags(config: TlsConfig) -> list[str]:
    return ["--tls-cert", str(config.cert), "--tls-key", str(config.key), "--tls-ca", str(config.ca)]


async def _with_metadata_server(secret: bytes, tls: TlsConfig | None, body: object) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_metadata(listener, RANKS, secret, tls=tls.load() if tls else None,
                                             handshake_timeout=30))
        with anyio.fail_after(30):
            await body(Endpoint("127.0.0.1", port))  # type: ignore[operator]
        tg.cancel_scope.cancel()


SECRET = b"metadata-secret-never-shown"


def test_metadata_over_tls_and_every_refusal(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridxfer")  # the CLI may have set its own level earlier
    foreign = TlsConfig(pki.untrusted.cert, pki.untrusted.key, pki.ca.cert)
    errors: list[str] = []

    async def body(at: Endpoint) -> None:
        assert await fetch_metadata(at, SECRET, tls=pki.d.load(), timeout=10) == RANKS
        Expected = type[Exception] | tuple[type[Exception], ...]
        attempts: list[tuple[TlsConfig | None, bytes, Expected, str]] = [(foreign, SECRET, AuthenticationError, "refused our certificate: it closed the connection"),
                    (pki.untrusted, SECRET, AuthenticationError, "not accept"),  # does not trust the server
                    (pki.d, b"wrong-" + SECRET, AuthenticationError, "authentication failed"),  # both checked
                    (None, SECRET, (ProtocolError, AuthenticationError), ".")]  # clear text to a TLS server
        for config, secret, kind, match in attempts:
            with pytest.raises(kind, match=match) as info:
                await fetch_metadata(at, secret, tls=config.load() if config else None, timeout=3)
            errors.append(f"{info.value} {info.value!r}")
    anyio.run(_with_metadata_server, SECRET, pki.p, body)
    assert "metadata sent to d0 at 127.0.0.1" in caplog.text
    assert "TLS handshake failed" in caplog.text
    text = caplog.text + "\n".join(errors)
    key_lines = [line for line in pki.p.key.read_text().splitlines() if "PRIVATE KEY" not in line]
    assert [s for s in (SECRET.decode(), SECRET.hex(), *key_lines) if s in text] == []


def test_metadata_server_with_a_certificate_for_another_host_is_refused(pki: Pki) -> None:
    async def body(at: Endpoint) -> None:
        with pytest.raises(AuthenticationError, match="not accept.*(mismatch|match)"):
            await fetch_metadata(at, b"", tls=pki.d.load(), timeout=10)
    anyio.run(_with_metadata_server, b"", pki.wrong_host, body)


async def _fake_metadata_server(answer: bytes, body: object) -> None:
    """A server that greets properly and then answers ``answer`` to the AUTH line."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"HXMETA 2 " + b"00" * 16 + b"\n")
            await stream.receive()
            try:
                await stream.send(answer)
                await anyio.sleep(30)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        with anyio.fail_after(20):
            await body(Endpoint("127.0.0.1", port))  # type: ignore[operator]
        tg.cancel_scope.cancel()


def test_metadata_document_and_lines_are_capped_before_parsing() -> None:
    async def huge_document(at: Endpoint) -> None:
        with pytest.raises(ProtocolError, match=f"document of {10**12} bytes exceeds the cap of 1048576 bytes"):
            await fetch_metadata(at, b"", timeout=10, max_document=1 << 20)

    async def endless_line(at: Endpoint) -> None:
        with pytest.raises(ProtocolError, match=f"more than {MAX_LINE_BYTES} bytes"):
            await fetch_metadata(at, b"", timeout=10)

    async def at_the_cap(at: Endpoint) -> None:  # negative control: a document of exactly the cap is read
        with pytest.raises(ProtocolError, match="malformed metadata document"):
            await fetch_metadata(at, b"", timeout=10, max_document=16)

    anyio.run(_fake_metadata_server, f"OK {10**12}\n".encode(), huge_document)
    anyio.run(_fake_metadata_server, b"OK " + b"9" * (3 * MAX_LINE_BYTES), endless_line)
    anyio.run(_fake_metadata_server, b"OK 16\n" + b"x" * 16, at_the_cap)


@pytest.mark.parametrize(("given", "missing"), [
    (["--tls-cert"], "--tls-key and --tls-ca are missing"),
    (["--tls-cert", "--tls-ca"], "--tls-key is missing"),
    (["--tls-key", "--tls-ca"], "--tls-cert is missing"),
])
def test_tls_flags_go_together(given: list[str], missing: str, pki: Pki,
                               capsys: pytest.CaptureFixture[str]) -> None:
    files = {"--tls-cert": pki.p.cert, "--tls-key": pki.p.key, "--tls-ca": pki.p.ca}
    flags = [str(x) for flag in given for x in (flag, files[flag])]
    for command in (["serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0"],
                    ["pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0", "--connect", "127.0.0.1:1"],
                    ["demo"]):
        code, _, err = run_cli(capsys, *command, *flags)
        assert code == 2 and missing in err and "Traceback" not in err, (command, err)


def test_unusable_tls_files_are_one_error_line_naming_flag_and_file(pki: Pki, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    key_text = pki.p.key.read_text()
    cases = [(TlsConfig(tmp_path / "nope.crt", pki.p.key, pki.ca.cert), "--tls-cert", "nope.crt", "cannot read"),
             (TlsConfig(pki.p.cert, pki.d.key, pki.ca.cert), "--tls-key", str(pki.d.key), "does not belong"),
             (TlsConfig(pki.p.cert, pki.p.key, pki.p.key), "--tls-ca", str(pki.p.key), "not a PEM CA")]
    for config, flag, name, why in cases:
        code, out, err = run_cli(capsys, "pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0",
                                 "--connect", "127.0.0.1:1", "--json", *_flags(config))
        assert code == 1 and err.startswith(f"error: {flag}: ") and name in err and why in err, err
        assert json.loads(out)["error"]["type"] == "TlsConfigError"
        assert "Traceback" not in err and key_text.splitlines()[1] not in err + out


def test_tls_refuses_other_transports(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0",
                           "--transport", "loopback", *_flags(pki.p))
    assert code == 2 and "encrypt the tcp transport" in err


def test_serve_and_pull_over_tls(pki: Pki, tmp_path: Path) -> None:
    foreign = TlsConfig(pki.untrusted.cert, pki.untrusted.key, pki.ca.cert)
    with serving(tmp_path, NEMOTRON, "--tp", "1", "--tokens", "64", *_flags(pki.p), verbose=True) as served:
        assert served.first_lines[-1].endswith("over TLS 1.3")
        pull = ["pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "2", "--rank", "1", "--connect", served.address,
                "--timeout", "60", "--json"]
        ok = run_process(*pull, *_flags(pki.d))
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["verified"] is True
        refused = run_process(*pull, *_flags(foreign))
        assert refused.returncode == 1 and "refused our certificate" in refused.stderr
        assert json.loads(refused.stdout)["error"]["type"] == "AuthenticationError"
        plain = run_process(*pull[:-3], "--timeout", "5")
        assert plain.returncode == 1 and "Traceback" not in plain.stderr
    log = served.stderr_text()
    assert "authenticated d0" in log and "TLS handshake failed" in log


def test_demo_over_tls(pki: Pki) -> None:
    result = run_process("demo", "--tokens", "256", "--dst-tp", "1", "--json", *_flags(pki.p), timeout=240)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["tls"] is True and doc["verified"] is True and doc["bytes"] > 0

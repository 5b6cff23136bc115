"""``serve --require-grants``: a puller is granted what the metadata it fetched lists, and a
peer that holds the transport metadata without having fetched it as itself reads nothing."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.cli._metadata import fetch_metadata, parse_endpoint
from hybridxfer.errors import GrantRefusedError, InvalidArgumentError
from hybridxfer.execute import AgentInfo
from hybridxfer.testing._checks import batch
from hybridxfer.transport import MemoryRegion, TlsConfig
from hybridxfer.transport.tcp import TcpTransport
from tests._pki import Pki, pki
from tests.cli._serving import serving
from tests.cli.conftest import NEMOTRON, run_process

TOKENS = "300"

__all__ = ["pki"]


def test_serve_with_grants_serves_the_puller_and_refuses_anyone_else(tmp_path: Path) -> None:
    with serving(tmp_path, NEMOTRON, "--tp", "1", "--tokens", TOKENS, "--requests", "2", "--require-grants",
                 verbose=True) as served:
        pulled = run_process("pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "2", "--rank", "1", "--connect",
                             served.address, "--json")
        assert pulled.returncode == 0, pulled.stderr
        doc = json.loads(pulled.stdout)
        assert doc["verified"] is True and doc["requests"] == 2 and doc["bytes"] > 0

        async def intruder() -> None:
            # fetched without naming itself: serve grants it nothing
            meta = (await fetch_metadata(parse_endpoint(served.address), b"", timeout=10))[0]
            transport_meta = AgentInfo.from_bytes(meta.metadata).transport_metadata
            dst = np.full(4096, 0x77, dtype=np.uint8)
            async with TcpTransport(name="intruder") as t:
                await t.register([MemoryRegion("dst", int(dst.ctypes.data), dst.nbytes)])
                peer = await t.connect(transport_meta)
                with pytest.raises(GrantRefusedError, match="no live grant"):
                    await t.read(peer, batch(0, 0, 0, 0, 4096))
            assert (dst == 0x77).all()
            with pytest.raises(InvalidArgumentError):
                await fetch_metadata(parse_endpoint(served.address), b"", timeout=10, identity="two words")

        anyio.run(intruder)
        log = served.stderr_text()
        assert "refused READ" in log and "'intruder'" in log and "bytes [0, 4096)" in log
        assert "without naming itself" in log
        assert "granted r0 to pull-d1" in log and "granted r1 to pull-d1" in log


def test_require_grants_needs_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli.conftest import run_cli

    code, _, err = run_cli(capsys, "serve", NEMOTRON, "--tp", "1", "--listen", "127.0.0.1:0", "--transport",
                           "loopback", "--require-grants")
    assert code != 0 and "--require-grants" in err and "Traceback" not in err


def test_under_tls_serve_grants_the_pullers_certificate(tmp_path: Path, pki: Pki) -> None:
    def tls(config: TlsConfig) -> list[str]:
        return ["--tls-cert", str(config.cert), "--tls-key", str(config.key), "--tls-ca", str(config.ca)]

    with serving(tmp_path, NEMOTRON, "--tp", "1", "--tokens", TOKENS, "--requests", "1", "--require-grants",
                 *tls(pki.p), verbose=True) as served:
        pulled = run_process("pull", NEMOTRON, "--src-tp", "1", "--dst-tp", "1", "--rank", "0", "--connect",
                             served.address, "--json", *tls(pki.d))
        assert pulled.returncode == 0, pulled.stderr
        assert json.loads(pulled.stdout)["verified"] is True
        log = served.stderr_text()
        assert "granted r0 to d0" in log and "granted r0 to pull-d0" not in log  # the certificate, not the name

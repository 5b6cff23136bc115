"""The certificate commands of docs/security.md run as printed, and what they make works.

Every ```sh block preceded by ``<!-- run: sh -->`` is executed with ``bash -euo pipefail``
in a fresh directory; the certificates it leaves there must then carry a real TLS transfer
between two transports, byte-exact. Negative control: the same commands run again in
another directory make a second CA, and a peer holding that CA's certificate is refused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.errors import AuthenticationError
from hybridxfer.testing._checks import batch, region_of
from hybridxfer.transport import TlsConfig
from hybridxfer.transport.tcp import TcpTransport

PAGE = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BLOCK = re.compile(r"<!-- run: sh -->\s*\n```sh\n(?P<code>.*?)\n```", re.DOTALL)


def _run_page_commands(directory: Path) -> None:
    blocks = BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert blocks, "docs/security.md has no runnable sh block"
    bash = shutil.which("bash")
    assert bash is not None
    for code in blocks:
        done = subprocess.run([bash, "-euo", "pipefail", "-c", code], cwd=directory, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]


def _peer(directory: Path, name: str, ca: Path | None = None) -> TlsConfig:
    return TlsConfig(directory / f"{name}.crt", directory / f"{name}.key", ca or directory / "ca.crt")


async def _transfer(p_tls: TlsConfig, d_tls: TlsConfig) -> bool:
    src = np.random.default_rng(5).integers(0, 256, 1 << 18, dtype=np.uint8)
    dst = np.zeros_like(src)
    async with TcpTransport(name="p", tls=p_tls) as p, TcpTransport(name="d", tls=d_tls) as d:
        await p.register([region_of("kv", src)])
        await d.register([region_of("kv", dst)])
        peer = await d.connect(p.local_metadata())
        await d.read(peer, batch(0, 0, 0, 0, src.nbytes))
    return bool(np.array_equal(dst, src))


def test_the_certificate_commands_make_a_working_cluster(tmp_path: Path) -> None:
    cluster, other = tmp_path / "cluster", tmp_path / "other"
    for folder in (cluster, other):
        folder.mkdir()
        _run_page_commands(folder)
    assert anyio.run(_transfer, _peer(cluster, "prefill-0"), _peer(cluster, "decode-0"))
    impostor = _peer(other, "decode-0", ca=cluster / "ca.crt")  # trusts the cluster; the cluster does not trust it
    with pytest.raises(AuthenticationError, match="refused our certificate"):
        anyio.run(_transfer, _peer(cluster, "prefill-0"), impostor)

"""Certificates for the TLS tests, made once per session with the ``openssl`` command line.

What the tests need: one trusted CA with a leaf per peer (SAN ``DNS:localhost``,
``IP:127.0.0.1``), a leaf of the trusted CA naming the wrong host, and a second,
untrusted CA with a leaf that is otherwise perfect. A missing ``openssl`` is a failure,
not a skip (``.ci/run`` installs it). Test modules import the ``pki`` fixture from here.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hybridxfer.transport import TlsConfig
from hybridxfer.transport.pki import CertificateAuthority


@attrs.frozen
class Pki:
    ca: CertificateAuthority
    p: TlsConfig  # the serving peer
    d: TlsConfig  # the reading peer
    wrong_host: TlsConfig  # trusted CA, but names only wrong.example
    untrusted: TlsConfig  # a perfect leaf of another CA
    untrusted_ca: CertificateAuthority


def make_test_pki(root: Path) -> Pki:
    ca = CertificateAuthority.create(root / "ca", "hybridxfer-test-ca")
    other = CertificateAuthority.create(root / "other-ca", "someone-elses-ca")
    return Pki(ca=ca, p=ca.issue("p0"), d=ca.issue("d0"), wrong_host=ca.issue("p-wrong", ["wrong.example"]),
                   untrusted=other.issue("d0"), untrusted_ca=other)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))

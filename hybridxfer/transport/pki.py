"""A throwaway certificate authority for tests, benchmarks and trying TLS out, made with ``openssl``.

Why the ``openssl`` command line and not a Python package: it is what an operator uses to
make a cluster's certificates (``docs/security.md`` shows the same commands), it is
installed wherever OpenSSL is, and it keeps the core free of a cryptography dependency.
Keys are P-256 (fast to make), certificates carry what :mod:`ssl` checks: a CA with
``basicConstraints CA:TRUE``; leaves with ``CA:FALSE``, both TLS usages (every peer both
serves and connects) and the subject-alternative names the peer is reached at.

Not for production: the CA key sits next to the certificates it signed, unencrypted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

from hybridxfer.errors import HybridXferError
from hybridxfer.transport._tls import TlsConfig

__all__ = ["CertificateAuthority", "PkiError"]

_CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = {name}
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXTENSIONS = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {alt_names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]


class PkiError(HybridXferError):
    """``openssl`` is missing or refused to make a certificate (its message attached)."""


def _openssl(*argv: str | Path, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PkiError("the openssl command line is not installed (Debian: apt-get install openssl)")
    done = subprocess.run([exe, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PkiError(f"openssl {argv[0]} failed ({done.returncode}): {done.stderr.strip()[-400:]}")


def _alt_name(host: str) -> str:
    return f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"


@attrs.frozen
class CertificateAuthority:
    """A CA in ``directory``: ``ca.crt`` and its key; :meth:`issue` signs leaves beside them."""

    directory: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @classmethod
    def create(cls, directory: Path | str, name: str = "hybridxfer-test-ca", *, days: int = 2) -> CertificateAuthority:
        """Make a new CA (a fresh key and a self-signed certificate) in ``directory``."""
        folder = Path(directory).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "ca.cnf"
        config.write_text(_CA_CONFIG.format(name=name))
        _openssl("req", "-x509", "-config", config, *_EC, "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", str(days), cwd=folder)
        os.chmod(folder / "ca.key", 0o600)
        return cls(folder, name)

    def issue(self, name: str, hosts: Sequence[str] = ("localhost", "127.0.0.1"), *, days: int = 2) -> TlsConfig:
        """A leaf certificate for ``name`` (its subject CN) valid for ``hosts``, and its key;
        returned as the :class:`TlsConfig` that peer uses (trusting this CA)."""
        if not hosts:
            raise PkiError(f"certificate {name!r} needs at least one host name or address")
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        ext = self.directory / f"{stem}.ext"
        ext.write_text(_LEAF_EXTENSIONS.format(alt_names=", ".join(_alt_name(h) for h in hosts)))
        _openssl("req", "-new", *_EC, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={name}",
                 cwd=self.directory)
        _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", self.cert, "-CAkey", self.key,
                 "-set_serial", "0x" + secrets.token_hex(8), "-days", str(days), "-extfile", ext,
                 "-out", f"{stem}.crt", cwd=self.directory)
        os.chmod(self.directory / f"{stem}.key", 0o600)
        return TlsConfig(self.directory / f"{stem}.crt", self.directory / f"{stem}.key", self.cert)

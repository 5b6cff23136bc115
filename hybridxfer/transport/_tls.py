"""TLS 1.3 with mutual certificate authentication, shared by the TCP transport and ``serve``/``pull``.

Why certificates and the standard library: a KV cache is the user's prompt in another
form, so bytes on a shared network must be encrypted, and both ends must prove who they
are with something a leaked shared secret does not give away. ``ssl`` speaks TLS 1.3 and
verifies X.509 chains; we only pin the choices that matter and refuse everything else:

* TLS 1.3 only (``minimum_version``), a certificate required on **both** sides
  (``CERT_REQUIRED``), signed by the one CA the deployment names (``ca``), and the
  server's certificate must name the host the client dialled (``check_hostname``).
* The peer's identity is its certificate's subject (:class:`TlsIdentity`), which is what
  request grants bind to; a name a peer declares about itself is never trusted.
* Files are read once, when the configuration is loaded, and every problem is a
  :class:`TlsConfigError` naming the file — never the file's contents (a key is a
  secret), and never a password prompt (encrypted keys are refused).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from hybridxfer.errors import InvalidArgumentError

__all__ = ["TlsConfig", "TlsConfigError", "TlsContexts", "TlsIdentity", "tls_config", "tls_refusal"]


class TlsConfigError(InvalidArgumentError):
    """A certificate, key or CA file is missing, unreadable or invalid (nothing was opened).

    ``path`` is the file, ``role`` which of ``cert``, ``key``, ``ca`` it is."""

    def __init__(self, message: str, *, path: Path, role: str) -> None:
        super().__init__(message)
        self.path = path
        self.role = role


def _refuse_password() -> bytes:
    # Called by OpenSSL for an encrypted key; an empty passphrase makes the load fail
    # instead of prompting on the terminal.
    return b""


@attrs.frozen
class TlsConfig:
    """Where this process's certificate, its private key and the trusted CA live (PEM files).

    ``cert`` may hold the leaf followed by intermediates. The same configuration serves
    both directions: a transport accepts connections with it and opens them with it."""

    cert: Path = attrs.field(converter=Path)
    key: Path = attrs.field(converter=Path)
    ca: Path = attrs.field(converter=Path)

    def load(self) -> TlsContexts:
        """Read the files and build both contexts; raises :class:`TlsConfigError` naming the file."""
        for role in ("cert", "key", "ca"):
            _check_readable(getattr(self, role), role)
        server = _context(ssl.PROTOCOL_TLS_SERVER, self)
        client = _context(ssl.PROTOCOL_TLS_CLIENT, self)
        client.check_hostname = True
        server.num_tickets = 0  # no session resumption: every connection proves its certificate
        return TlsContexts(server=server, client=client, config=self)


def tls_config(value: TlsConfig | Mapping[str, str | os.PathLike[str]] | None) -> TlsConfig | None:
    """A :class:`TlsConfig` from itself or from a mapping with keys ``cert``, ``key``, ``ca``
    (the form a JSON or TOML configuration gives); ``None`` stays ``None``."""
    if value is None or isinstance(value, TlsConfig):
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"tls must be a TlsConfig or a mapping of cert, key and ca, "
                                   f"not {type(value).__name__}")
    missing = sorted({"cert", "key", "ca"} - set(value))
    extra = sorted(set(value) - {"cert", "key", "ca"})
    if missing or extra:
        raise InvalidArgumentError(f"tls mapping needs exactly the keys cert, key, ca "
                                   f"(missing: {missing or 'none'}, unknown: {extra or 'none'})")
    return TlsConfig(Path(value["cert"]), Path(value["key"]), Path(value["ca"]))


def _check_readable(path: Path, role: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsConfigError(f"TLS {role} file {path}: cannot read it: {exc.strerror or type(exc).__name__}",
                             path=path, role=role) from None


def _context(protocol: int, config: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(config.ca))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsConfigError(f"TLS ca file {config.ca}: not a PEM CA certificate ({_reason(exc)})",
                             path=config.ca, role="ca") from None
    # The leaf alone first, so that a bad certificate is told apart from a bad key.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(config.cert))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsConfigError(f"TLS cert file {config.cert}: not a PEM certificate ({_reason(exc)})",
                             path=config.cert, role="cert") from None
    try:
        ctx.load_cert_chain(str(config.cert), str(config.key), password=_refuse_password)
    except (ssl.SSLError, ValueError) as exc:
        reason = _reason(exc)
        what = ("does not belong to the certificate " + str(config.cert)) if "KEY_VALUES_MISMATCH" in reason \
            else "not an unencrypted PEM private key"
        raise TlsConfigError(f"TLS key file {config.key}: {what} ({reason})", path=config.key, role="key") from None
    return ctx


def _reason(exc: BaseException) -> str:
    """The library's short reason code (never file contents)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return type(exc).__name__


@attrs.frozen(eq=False)
class TlsContexts:
    """The two loaded contexts of one :class:`TlsConfig` (built once, used per connection)."""

    server: ssl.SSLContext = attrs.field(repr=False)
    client: ssl.SSLContext = attrs.field(repr=False)
    config: TlsConfig


@attrs.frozen
class TlsIdentity:
    """Who a verified peer certificate says its holder is.

    ``name`` is the identity grants bind to: the subject's common name, else the first
    DNS subject-alternative name, else the first URI one."""

    common_name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.common_name or next(iter(self.dns_names), "") or next(iter(self.uris), "")

    @classmethod
    def of(cls, sock: ssl.SSLSocket | ssl.SSLObject) -> TlsIdentity:
        """The identity in the (already verified) certificate ``sock``'s peer presented."""
        return cls.from_peercert(sock.getpeercert() or {})

    @classmethod
    def from_peercert(cls, cert: Mapping[str, Any]) -> TlsIdentity:
        """From :meth:`ssl.SSLSocket.getpeercert`'s dictionary."""
        cn = ""
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and not cn:
                    cn = str(value)
        alt: dict[str, list[str]] = {"DNS": [], "IP Address": [], "URI": []}
        for kind, value in cert.get("subjectAltName", ()):
            if kind in alt:
                alt[kind].append(str(value).strip())
        return cls(cn, tuple(alt["DNS"]), tuple(alt["IP Address"]), tuple(alt["URI"]))


#: TLS alerts by which a server refuses the certificate a client presented (OpenSSL reason codes).
_REFUSED_ALERTS = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                   "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED",
                   "DECRYPT_ERROR", "HANDSHAKE_FAILURE")


def tls_refusal(exc: BaseException) -> str:
    """Why a TLS peer would not talk to us, when ``exc`` (or what it translated, through
    ``__cause__``/``__context__``) is a TLS failure; ``""`` otherwise."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return ""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"presented a certificate we do not accept: {cause.verify_message or cause.reason}"
    reason = str(cause.reason or "")
    if any(alert in reason for alert in _REFUSED_ALERTS):
        return f"refused our certificate ({reason})"
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH_TOO_LONG" in reason:
        return f"does not speak TLS ({reason}): is the peer configured with TLS?"
    return f"TLS handshake failed ({reason or type(cause).__name__})"

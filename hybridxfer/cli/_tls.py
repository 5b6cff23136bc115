"""``--tls-cert``/``--tls-key``/``--tls-ca``: the TLS options ``serve``, ``pull`` and ``demo`` share.

Why checked here, before anything opens: all three files or none (a half-configured TLS
would silently fall back to clear text), and every file is loaded once up front, so a
missing, unreadable or invalid one is one ``error:`` line naming the option and the file
— not a failure deep inside a transport, and never the file's contents.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from hybridxfer.transport import TlsConfig, TlsConfigError, TlsContexts

__all__ = ["TLS_FLAGS", "add_tls_arguments", "tls_argv", "tls_from_args"]

#: The option of each file, in the order they are documented.
TLS_FLAGS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}


def add_tls_arguments(parser: Any) -> None:
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS 1.3: this process's certificate (PEM); "
                        "with --tls-key and --tls-ca, every connection is encrypted and both ends verified")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS: the certificate's private key (PEM, unencrypted)")
    parser.add_argument("--tls-ca", metavar="FILE", help="TLS: the CA certificate peers' certificates must chain to")


def tls_from_args(args: argparse.Namespace) -> tuple[TlsConfig, TlsContexts] | None:
    """The TLS configuration the options give, loaded (None: no TLS option given).

    Raises ``UsageError`` naming the missing option(s), :class:`TlsConfigError` naming
    the option and the file that cannot be used."""
    from hybridxfer.cli._usage import UsageError

    values: dict[str, str] = {role: getattr(args, f"tls_{role}", None) or "" for role in TLS_FLAGS}
    if not any(values.values()):
        return None
    missing = [TLS_FLAGS[role] for role, value in values.items() if not value]
    if missing:
        raise UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: "
                         "--tls-cert, --tls-key and --tls-ca go together")
    config = TlsConfig(values["cert"], values["key"], values["ca"])
    try:
        return config, config.load()
    except TlsConfigError as exc:
        raise TlsConfigError(f"{TLS_FLAGS[exc.role]}: {exc}", path=exc.path, role=exc.role) from None


def tls_argv(args: argparse.Namespace) -> list[str]:
    """The TLS options again, for a child command line (``demo`` starts ``serve``/``pull``)."""
    out: list[str] = []
    for role, flag in TLS_FLAGS.items():
        value = getattr(args, f"tls_{role}", None)
        if value:
            out += [flag, os.path.abspath(value)]
    return out

"""Find transports by name through the ``hybridxfer.transports`` entry-point group.

Why entry points: built-ins (``loopback``, ``tcp``) and third-party distributions
(``hybridxfer-nixl``, ``hybridxfer-ucxx``) register the same way, so the core never
imports a heavy native stack it does not need, and a plugin needs no change here.
Loading is lazy (the module behind a name is imported on first use) and strict: an
unknown name is an error listing what *is* installed, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from urllib.parse import urlsplit

from hybridxfer.errors import TransportNotFoundError
from hybridxfer.transport._protocol import Transport

__all__ = [
    "ENTRY_POINT_GROUP",
    "TransportFactory",
    "available_transports",
    "get_transport_factory",
    "open_transport",
]

ENTRY_POINT_GROUP = "hybridxfer.transports"

#: A transport class (or factory function): keyword options in, an unopened transport out.
TransportFactory = Callable[..., Transport]

# Names we know a distribution for, so the error can say what to install.
_INSTALL_HINTS = {
    "nixl": "pip install hybridxfer-nixl",
    "ucxx": "pip install hybridxfer-ucxx",
}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_transports() -> tuple[str, ...]:
    """Names of every installed transport, sorted (nothing is imported)."""
    return tuple(sorted(_entry_points()))


def get_transport_factory(name: str) -> TransportFactory:
    """The factory registered under ``name``, importing its module now.

    Raises :class:`TransportNotFoundError` listing the installed names and, for known
    plugins, the ``pip install`` command that provides the missing one.
    """
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "(none)"
        hint = _INSTALL_HINTS.get(name, f"pip install hybridxfer-{name}")
        raise TransportNotFoundError(
            f"no transport named {name!r} is installed (installed: {known}); "
            f"if it is a plugin, install it: {hint}"
        )
    try:
        factory = ep.load()
    except ImportError as exc:
        raise TransportNotFoundError(
            f"transport {name!r} is registered by {ep.value!r} but failed to import: {exc}"
        ) from exc
    if not callable(factory):
        raise TransportNotFoundError(f"transport {name!r} entry point {ep.value!r} is not callable")
    return factory  # type: ignore[no-any-return]


def open_transport(name_or_url: str, **options: object) -> Transport:
    """Create (not yet enter) the transport named by ``name_or_url``.

    ``"tcp"`` or ``"tcp://HOST:PORT"``: a URL's scheme picks the transport and its host
    and port become the ``host`` / ``port`` options unless those are given explicitly.
    """
    if "://" not in name_or_url:
        return get_transport_factory(name_or_url)(**options)
    url = urlsplit(name_or_url)
    if url.hostname is not None:
        options.setdefault("host", url.hostname)
    if url.port is not None:
        options.setdefault("port", url.port)
    return get_transport_factory(url.scheme)(**options)

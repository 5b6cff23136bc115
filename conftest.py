"""Repository-wide pytest hooks (the root conftest covers tests/, transports/*/tests and engines/*/tests).

One hook: a test process that loaded NIXL ends with ``os._exit`` after pytest has printed
its summary. The ``nixl-cu12`` wheel's bundled ``libnl-route`` segfaults in its exit-time
destructor once UCX's InfiniBand module was loaded (see ``hybridxfer/cli/_exit.py``, where
the CLI does the same): without this, a green run would end with exit status 139.
"""

from __future__ import annotations

import os
import sys

import pytest

_STATUS = pytest.StashKey[int]()
_NATIVE_MODULES = ("nixl_cu12._bindings", "nixl_cu13._bindings", "nixl._bindings")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if any(name in sys.modules for name in _NATIVE_MODULES):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash.get(_STATUS, 0))

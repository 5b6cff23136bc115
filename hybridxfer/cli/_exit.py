"""Ending a ``hybridxfer`` process once NIXL's native libraries are loaded.

Why not a normal exit: the ``nixl-cu12`` wheel bundles UCX with its InfiniBand module,
which links a private copy of ``libibverbs`` and ``libnl-route-3``. When the process
exits, glibc runs every library's destructors (``_dl_fini``), and ``libnl-route``'s
``rtnl_tc_unregister`` dereferences a list entry that was never linked: a segfault
(exit 139) *after* the command finished and printed its result. It happens with one bare
``nixl_agent`` holding the UCX backend, created and deleted in order, so closing agents or
worker threads in any order cannot avoid it (``UCX_MODULES=^ib`` does, by never loading
``libibverbs`` — not something to force on an RDMA machine).

So once the command has closed everything it opened, and NIXL is loaded, the process
flushes its streams and logging and leaves with ``os._exit``: the exit status is the
command's, and the native destructors — which free nothing the kernel does not — are
skipped. Processes that never loaded NIXL exit normally.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["exit_process", "native_exit_needed"]

#: Extension modules whose native libraries crash in their exit-time destructors.
_NATIVE_MODULES = ("nixl_cu12._bindings", "nixl_cu13._bindings", "nixl._bindings")


def native_exit_needed() -> bool:
    """Whether a library with a crashing destructor is loaded in this process."""
    return any(name in sys.modules for name in _NATIVE_MODULES)


def exit_process(status: int) -> NoReturn:
    """End the process with ``status``, skipping native destructors when they would crash."""
    if not native_exit_needed():
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass
    os._exit(status)

"""The discovery tests run against a real etcd server (see :mod:`tests._etcd`)."""

from __future__ import annotations

from tests._etcd import EtcdServer, etcd

__all__ = ["EtcdServer", "etcd"]

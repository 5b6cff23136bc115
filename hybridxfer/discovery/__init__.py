"""Cluster discovery through etcd, as deployments run it.

Agents publish a :class:`PeerRecord` (metadata address, model, incarnation) under a leased
key and watch for peers; a peer that dies drops out when its lease expires, and
:meth:`PeerDirectory.guard` turns that into a :class:`~hybridxfer.errors.PeerGoneError`
for whatever still depends on it. The direct metadata channel (``serve --listen`` /
``pull --connect``) needs none of this and stays the default.
"""

from __future__ import annotations

from hybridxfer.discovery._directory import PeerDirectory, PeerEvent
from hybridxfer.discovery._etcd import EtcdClient, KeyEvent, KeyValue
from hybridxfer.discovery._record import PeerRecord, new_incarnation

__all__ = ["EtcdClient", "KeyEvent", "KeyValue", "PeerDirectory", "PeerEvent", "PeerRecord", "new_incarnation"]

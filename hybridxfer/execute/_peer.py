"""``Peer``: a connected, compatible peer agent (what ``Agent.connect`` returns).

Why a module of its own: the agent and its streaming calls both speak of peers, and the
value needs nothing of either.
"""

from __future__ import annotations

import attrs

from hybridxfer.execute._info import AgentInfo
from hybridxfer.transport import PeerHandle

__all__ = ["Peer"]


@attrs.frozen
class Peer:
    """A connected, compatible peer agent."""

    info: AgentInfo
    handle: PeerHandle = attrs.field(repr=False)

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def incarnation(self) -> str:
        """The peer's incarnation when we handshook with it."""
        return self.info.incarnation

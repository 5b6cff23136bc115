"""What :meth:`MooncakeTransport.connect` returns: a peer's name, engine address and regions."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer_mooncake._envelope import Envelope

__all__ = ["MooncakePeer"]


@attrs.frozen(eq=False)
class MooncakePeer:
    """A connected Mooncake peer. ``region_names`` is the order ``src_region`` indexes."""

    envelope: Envelope
    addresses: npt.NDArray[np.int64] = attrs.field(repr=False)
    lengths: npt.NDArray[np.int64] = attrs.field(repr=False)

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> MooncakePeer:
        return cls(envelope, np.array([r.address for r in envelope.regions], dtype=np.int64),
                   np.array([r.length for r in envelope.regions], dtype=np.int64))

    @property
    def name(self) -> str:
        return self.envelope.agent_name

    @property
    def region_names(self) -> Sequence[str]:
        return tuple(r.name for r in self.envelope.regions)

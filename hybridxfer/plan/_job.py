"""A job: one (layer, source piece, destination piece) pairing from one source rank."""

from __future__ import annotations

import attrs

from hybridxfer.layout import PlacedPiece
from hybridxfer.plan._runs import Runs

__all__ = ["Job"]


@attrs.frozen(eq=False)
class Job:
    """One (layer, source piece, destination piece) pairing from one source rank.

    ``runs`` are relative to the piece's block start on each side (for token pieces: to
    the start of a chunk of ``chunk_tokens`` tokens at token offset 0 of a kernel block).
    """

    src_rank: int
    layer: str
    kind: str
    src_group: str
    dst_group: str
    src_region: int
    dst_region: int
    src: PlacedPiece
    dst: PlacedPiece
    runs: Runs
    window: int | None
    #: ``(i, n)``: this job moves the i-th of n equal, contiguous shares of the token chunks
    #: (a replicated piece held by n source ranks is read from all of them, for bandwidth)
    spread: tuple[int, int] = (0, 1)

    @property
    def has_tokens(self) -> bool:
        return self.dst.piece.has_tokens

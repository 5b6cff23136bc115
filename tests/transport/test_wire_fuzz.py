"""The TCP frame parser only ever raises ProtocolError, whatever bytes arrive.

10,000 hypothesis cases in all (5,000 + 4,000 + 1,000), parser-level so they stay fast.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridxfer.errors import ProtocolError
from hybridxfer.transport.tcp import _wire

FUZZ = settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _decode(data: bytes) -> None:
    try:
        _wire.decode_frame(data)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode(data)


@settings(max_examples=4_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.sampled_from(list(_wire.FrameType)), st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(max_size=512))
def test_wellformed_header_hostile_body(kind: _wire.FrameType, version: int, length: int, body: bytes) -> None:
    header = _wire.HEADER.pack(_wire.MAGIC, version, kind, length)
    try:
        frame_type, declared = _wire.parse_header(header)
    except ProtocolError:
        return
    assert declared <= _wire.payload_limit(frame_type)  # bounded allocation before reading
    _decode(header + body)


@settings(max_examples=1_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30), st.integers(-3, 3))
def test_read_frames_with_wrong_counts(count: int, values: list[int], skew: int) -> None:
    cols = np.array(values, dtype="<i8").tobytes()
    payload = struct.pack(">QI", 1, count) + cols[: max(0, len(cols) + skew)]
    data = _wire.HEADER.pack(_wire.MAGIC, _wire.VERSION, _wire.FrameType.READ, len(payload)) + payload
    _decode(data)


def test_roundtrip_read_request() -> None:
    cols = [np.array([0, 1], dtype=np.int64), np.array([5, 2**40], dtype=np.int64), np.array([7, 8], dtype=np.int64)]
    frame_type, req = _wire.decode_frame(b"".join(_wire.encode_read_request(9, *cols)))
    assert frame_type is _wire.FrameType.READ and isinstance(req, _wire.ReadRequest)
    assert req.seq == 9 and req.src_offset.tolist() == [5, 2**40] and req.length.tolist() == [7, 8]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HX",
        _wire.HEADER.pack(b"XX", 1, 5, 0),
        _wire.HEADER.pack(_wire.MAGIC, 2, 5, 0),
        _wire.HEADER.pack(_wire.MAGIC, 1, 99, 0),
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.READ, 2**64 - 1),
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.NOTIFY_ACK, 1) + b"x",
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.READ_OK, 16) + struct.pack(">QQ", 1, 2**63),
    ],
)
def test_specific_malformed_frames(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        _wire.decode_frame(data)

"""The TCP frame parser: exactly the frames the wire format allows decode, and they decode right.

Not only "no crash". The reference below is the frame table of the wire module's
docstring, written out independently of the parser: for any bytes, ``decode_frame``
succeeds exactly when the reference accepts them, otherwise it raises ``ProtocolError``
(never another exception); a frame it decodes re-encodes, from the decoded value, to the
very same bytes; and the header parser never lets through a length above the type's
limit, so a reader allocates a bounded amount before reading.

Over 10,000 hypothesis cases in all, parser-level so they stay fast.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridxfer.errors import ProtocolError
from hybridxfer.transport.tcp import _wire

FUZZ = settings(deadline=None, database=None)
T = _wire.FrameType

#: Payload limits, from the frame table: nonce/mac 32 B, names 256 B, reasons 1 KiB,
#: NOTIFY 64 KiB, READ 12 B + 24 B per descriptor, at most 65,536 descriptors, WRITE 20 B + 24 B
#: per descriptor (same cap).
LIMITS = {T.CHALLENGE: 32 + 256, T.AUTH: 64 + 256, T.AUTH_OK: 32, T.AUTH_FAIL: 1024,
          T.READ: 12 + 24 * 65536, T.READ_OK: 16, T.READ_ERR: 8 + 1024, T.NOTIFY: 64 * 1024, T.NOTIFY_ACK: 0,
          T.WRITE: 20 + 24 * 65536, T.WRITE_OK: 8, T.WRITE_ERR: 8 + 1024}


def _utf8(data: bytes, limit: int) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(data) <= limit


def reference_accepts(data: bytes) -> bool:
    """The frame table as a predicate over bytes: header, then the payload rule of its type."""
    if len(data) < 12:
        return False
    magic, version, code, length = struct.unpack(">2sBBQ", data[:12])
    if magic != b"HX" or version != 1 or code not in {t.value for t in T}:
        return False
    kind, payload = T(code), data[12:]
    if length != len(payload) or length > LIMITS[kind]:
        return False
    rules: dict[_wire.FrameType, Callable[[bytes], bool]] = {
        T.CHALLENGE: lambda p: len(p) >= 32 and _utf8(p[32:], 256),
        T.AUTH: lambda p: len(p) >= 64 and _utf8(p[64:], 256),
        T.AUTH_OK: lambda p: len(p) == 32,
        T.AUTH_FAIL: lambda p: _utf8(p, 1024),
        T.READ: lambda p: len(p) >= 12 and len(p) == 12 + 24 * struct.unpack(">QI", p[:12])[1],
        T.READ_OK: lambda p: len(p) == 16 and struct.unpack(">QQ", p)[1] < 2**63,
        T.READ_ERR: lambda p: len(p) >= 8 and _utf8(p[8:], 1024),
        T.NOTIFY: lambda p: True,
        T.NOTIFY_ACK: lambda p: p == b"",
        T.WRITE: lambda p: (len(p) >= 20 and len(p) == 20 + 24 * struct.unpack(">QIQ", p[:20])[1]
                            and struct.unpack(">QIQ", p[:20])[2] < 2**63),
        T.WRITE_OK: lambda p: len(p) == 8,
        T.WRITE_ERR: lambda p: len(p) >= 8 and _utf8(p[8:], 1024),
    }
    return rules[kind](payload)


def reencode(kind: _wire.FrameType, value: _wire.Payload) -> bytes:
    """The frame bytes for a decoded value, per the frame table (not through the parser)."""
    if isinstance(value, _wire.Challenge):
        payload = value.nonce + value.server_name.encode()
    elif isinstance(value, _wire.Auth):
        payload = value.nonce + value.mac + value.client_name.encode()
    elif isinstance(value, _wire.ReadRequest):
        payload = struct.pack(">QI", value.seq, len(value.length)) + b"".join(
            c.astype("<i8").tobytes() for c in (value.src_region, value.src_offset, value.length))
    elif isinstance(value, _wire.ReadOk):
        payload = struct.pack(">QQ", value.seq, value.total)
    elif isinstance(value, _wire.ReadError | _wire.WriteError):
        payload = struct.pack(">Q", value.seq) + value.reason.encode()
    elif isinstance(value, _wire.WriteRequest):
        payload = struct.pack(">QIQ", value.seq, len(value.length), value.total) + b"".join(
            c.astype("<i8").tobytes() for c in (value.dst_region, value.dst_offset, value.length))
    elif isinstance(value, _wire.WriteOk):
        payload = struct.pack(">Q", value.seq)
    elif isinstance(value, str):
        payload = value.encode()
    elif value is None:
        payload = b""
    else:
        payload = value
    return struct.pack(">2sBBQ", b"HX", 1, kind, len(payload)) + payload


def check(data: bytes) -> None:
    """The property every case below is held to."""
    try:
        kind, value = _wire.decode_frame(data)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError says what is wrong"
        assert not reference_accepts(data), f"valid frame refused: {exc}"
        return
    assert reference_accepts(data), f"invalid frame decoded as {kind.name}: {value!r}"
    assert reencode(kind, value) == data


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly well-formed frames of every type, some with one field of the header or body off."""
    kind = draw(st.sampled_from(list(T)))
    if kind is T.READ:
        count = draw(st.integers(0, 40))
        payload = struct.pack(">QI", draw(st.integers(0, 2**64 - 1)), count)
        payload += draw(st.binary(min_size=24 * count, max_size=24 * count))
    elif kind is T.WRITE:
        count = draw(st.integers(0, 40))
        payload = struct.pack(">QIQ", draw(st.integers(0, 2**64 - 1)), count, draw(st.integers(0, 2**64 - 1)))
        payload += draw(st.binary(min_size=24 * count, max_size=24 * count))
    else:
        head = {T.CHALLENGE: 32, T.AUTH: 64, T.AUTH_OK: 32, T.READ_OK: 16, T.READ_ERR: 8, T.WRITE_OK: 8,
                T.WRITE_ERR: 8}.get(kind, 0)
        payload = draw(st.binary(min_size=head, max_size=head))
        if kind not in (T.AUTH_OK, T.READ_OK, T.NOTIFY_ACK, T.WRITE_OK):
            tail = draw(st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=40)))
            payload += tail
    header = [b"HX", 1, int(kind), len(payload)]
    mutation = draw(st.sampled_from(["none"] * 6 + ["magic", "version", "type", "length", "cut", "extra"]))
    if mutation == "magic":
        header[0] = draw(st.binary(min_size=2, max_size=2))
    elif mutation == "version":
        header[1] = draw(st.integers(0, 255))
    elif mutation == "type":
        header[2] = draw(st.integers(0, 255))
    elif mutation == "length":
        header[3] = draw(st.integers(0, 2**64 - 1))
    elif mutation == "cut":
        payload = payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    elif mutation == "extra":
        payload += draw(st.binary(min_size=1, max_size=30))
    return struct.pack(">2sBBQ", *header) + payload


@settings(FUZZ, max_examples=3_000)
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@settings(FUZZ, max_examples=5_000)
@given(frames())
def test_frames_of_every_type(data: bytes) -> None:
    check(data)


@settings(FUZZ, max_examples=1_000)
@given(st.sampled_from(list(T)), st.integers(0, 255), st.integers(0, 2**64 - 1))
def test_header_never_admits_more_than_the_limit(kind: _wire.FrameType, version: int, length: int) -> None:
    header = _wire.HEADER.pack(_wire.MAGIC, version, kind, length)
    try:
        frame_type, declared = _wire.parse_header(header)
    except ProtocolError:
        assert version != 1 or length > LIMITS[kind]
        return
    assert (frame_type, declared, version) == (kind, length, 1)
    assert declared <= LIMITS[kind] == _wire.payload_limit(kind)


@settings(FUZZ, max_examples=1_000)
@given(st.integers(0, 2**64 - 1), st.lists(st.tuples(*[st.integers(-(2**63), 2**63 - 1)] * 3), max_size=30))
def test_read_request_round_trip(seq: int, rows: list[tuple[int, int, int]]) -> None:
    cols = [np.array([r[i] for r in rows], dtype=np.int64) for i in range(3)]
    data = b"".join(_wire.encode_read_request(seq, *cols))
    kind, req = _wire.decode_frame(data)
    assert kind is T.READ and isinstance(req, _wire.ReadRequest) and req.seq == seq
    for got, want in zip((req.src_region, req.src_offset, req.length), cols, strict=True):
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
    check(data)


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 2**64 - 1), st.lists(st.tuples(st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40),
                                                     st.integers(0, 2**40)), max_size=30))
def test_write_request_round_trip(seq: int, rows: list[tuple[int, int, int]]) -> None:
    cols = [np.array([r[i] for r in rows], dtype=np.int64) for i in range(3)]
    data = b"".join(_wire.encode_write_request(seq, *cols))
    kind, req = _wire.decode_frame(data)
    assert kind is T.WRITE and isinstance(req, _wire.WriteRequest) and req.seq == seq
    assert req.total == sum(r[2] for r in rows)
    for got, want in zip((req.dst_region, req.dst_offset, req.length), cols, strict=True):
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
    check(data)


@settings(FUZZ, max_examples=500)
@given(st.integers(0, 2**64 - 1), st.text(max_size=1100))
def test_read_error_round_trip(seq: int, reason: str) -> None:
    """Reasons are cut to the limit on a character boundary, never into invalid UTF-8."""
    kind, err = _wire.decode_frame(_wire.encode_read_error(seq, reason))
    assert kind is T.READ_ERR and isinstance(err, _wire.ReadError) and err.seq == seq
    assert reason.startswith(err.reason) and len(err.reason.encode()) <= 1024
    assert err.reason == reason or len(err.reason.encode()) > 1024 - 4


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
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.READ, 12) + struct.pack(">QI", 1, 1),
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.AUTH_FAIL, 2) + b"\xff\xfe",
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.WRITE, 20) + struct.pack(">QIQ", 1, 0, 2**63),
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.WRITE, 20) + struct.pack(">QIQ", 1, 1, 8),
        _wire.HEADER.pack(_wire.MAGIC, 1, _wire.FrameType.WRITE_OK, 7) + b"\0" * 7,
    ],
)
def test_specific_malformed_frames(data: bytes) -> None:
    assert not reference_accepts(data)
    with pytest.raises(ProtocolError):
        _wire.decode_frame(data)


def test_reference_rejects_what_it_should() -> None:
    good = _wire.encode_read_ok(3, 7)
    assert reference_accepts(good) and reencode(*_wire.decode_frame(good)) == good
    assert not reference_accepts(good[:-1]) and not reference_accepts(good + b"\0")


def test_property_catches_broken_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a parser that refuses a valid frame, or accepts or misreads one, fails."""
    good = _wire.encode_read_ok(3, 7)

    def refuses(data: bytes) -> tuple[_wire.FrameType, _wire.Payload]:
        raise ProtocolError("refused")

    def accepts(data: bytes) -> tuple[_wire.FrameType, _wire.Payload]:
        return T.NOTIFY, data[12:]

    def misreads(data: bytes) -> tuple[_wire.FrameType, _wire.Payload]:
        return T.READ_OK, _wire.ReadOk(3, 8)

    for parser, data, message in [(refuses, good, "valid frame refused"),
                                  (accepts, good[:-1], "invalid frame decoded"),
                                  (misreads, good, "assert")]:
        monkeypatch.setattr(_wire, "decode_frame", parser)
        with pytest.raises(AssertionError, match=message):
            check(data)

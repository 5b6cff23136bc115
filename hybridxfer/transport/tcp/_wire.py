"""The TCP transport's wire format: a sans-IO, versioned binary framing (never pickle).

Every frame starts with a fixed 12-byte header ``>2sBBQ``: magic ``b"HX"``, protocol
version, frame type, payload length. The payload layout depends on the type (below).
Why sans-IO: the parser is the attack surface a port scanner or a buggy peer reaches, so
it is a pure function of bytes that a fuzzer can hammer without sockets; it raises only
:class:`ProtocolError` and never allocates more than the per-type limit, because lengths
are checked against the limit *before* anything is read.

Bulk data is the exception to framing: a ``READ_OK`` control frame announces exactly how
many raw bytes follow, so the receiver can ``recv_into`` its destination memory directly.

Frames (C = client, the reading D side; S = server, the serving P side)::

    CHALLENGE  S->C  nonce[32] server_name [NUL incarnation]
    AUTH       C->S  nonce[32] mac[32] client_name
    AUTH_OK    S->C  mac[32]                    (proves the server knows the secret too)
    AUTH_FAIL  S->C  reason
    READ       C->S  seq u64, count u32, src_region[count] src_offset[count] length[count]  (<i8)
    READ_OK    S->C  seq u64, total u64, then `total` raw bytes (not framed)
    READ_ERR   S->C  seq u64, reason
    NOTIFY     C->S  message
    NOTIFY_ACK S->C  (empty)
    WRITE      C->S  seq u64, count u32, total u64, dst_region[count] dst_offset[count] length[count]
                     (<i8), then `total` raw bytes (not framed): the client pushes into the server's regions
    WRITE_OK   S->C  seq u64                    (every byte is in the server's memory)
    WRITE_ERR  S->C  seq u64, reason            (refused: the `total` bytes were read and dropped)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import ProtocolError

__all__ = [
    "HEADER",
    "MAGIC",
    "MAX_DESCRIPTORS_PER_READ",
    "MAX_NAME_BYTES",
    "MAX_NOTIFY_BYTES",
    "NONCE_BYTES",
    "VERSION",
    "Auth",
    "Challenge",
    "FrameType",
    "ReadError",
    "ReadOk",
    "ReadRequest",
    "WriteError",
    "WriteOk",
    "WriteRequest",
    "client_mac",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_read_error",
    "encode_read_ok",
    "encode_read_request",
    "encode_write_error",
    "encode_write_ok",
    "encode_write_request",
    "parse_header",
    "payload_limit",
    "server_mac",
]

Int64Array = npt.NDArray[np.int64]

MAGIC = b"HX"
VERSION = 1
HEADER = struct.Struct(">2sBBQ")
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_NAME_BYTES = 256
MAX_REASON_BYTES = 1024
MAX_NOTIFY_BYTES = 64 * 1024
#: Bounds one READ frame (1.5 MiB of descriptors); the executor splits larger batches.
MAX_DESCRIPTORS_PER_READ = 65536

_U64 = struct.Struct(">Q")
_READ_HEAD = struct.Struct(">QI")
_READ_OK = struct.Struct(">QQ")
_WRITE_HEAD = struct.Struct(">QIQ")
_I8 = np.dtype("<i8")


class FrameType(enum.IntEnum):
    CHALLENGE = 1
    AUTH = 2
    AUTH_OK = 3
    AUTH_FAIL = 4
    READ = 5
    READ_OK = 6
    READ_ERR = 7
    NOTIFY = 8
    NOTIFY_ACK = 9
    WRITE = 10
    WRITE_OK = 11
    WRITE_ERR = 12


_LIMITS = {
    FrameType.CHALLENGE: NONCE_BYTES + MAX_NAME_BYTES,
    FrameType.AUTH: NONCE_BYTES + MAC_BYTES + MAX_NAME_BYTES,
    FrameType.AUTH_OK: MAC_BYTES,
    FrameType.AUTH_FAIL: MAX_REASON_BYTES,
    FrameType.READ: _READ_HEAD.size + 3 * 8 * MAX_DESCRIPTORS_PER_READ,
    FrameType.READ_OK: _READ_OK.size,
    FrameType.READ_ERR: _U64.size + MAX_REASON_BYTES,
    FrameType.NOTIFY: MAX_NOTIFY_BYTES,
    FrameType.NOTIFY_ACK: 0,
    FrameType.WRITE: _WRITE_HEAD.size + 3 * 8 * MAX_DESCRIPTORS_PER_READ,
    FrameType.WRITE_OK: _U64.size,
    FrameType.WRITE_ERR: _U64.size + MAX_REASON_BYTES,
}


def payload_limit(frame_type: FrameType) -> int:
    """The largest payload a frame of this type may carry (what a reader may allocate)."""
    return _LIMITS[frame_type]


@attrs.frozen
class Challenge:
    nonce: bytes
    #: The server's agent name, then (after a NUL) the serving transport's incarnation: a
    #: client reconnecting to a known address tells a restarted server before it reads.
    server_name: str

    @property
    def name(self) -> str:
        return self.server_name.partition("\0")[0]

    @property
    def incarnation(self) -> str:
        return self.server_name.partition("\0")[2]


@attrs.frozen
class Auth:
    nonce: bytes
    mac: bytes
    client_name: str


@attrs.frozen(eq=False)
class ReadRequest:
    seq: int
    src_region: Int64Array
    src_offset: Int64Array
    length: Int64Array


@attrs.frozen
class ReadOk:
    seq: int
    total: int


@attrs.frozen
class ReadError:
    seq: int
    reason: str


@attrs.frozen(eq=False)
class WriteRequest:
    """A push into the server's regions; ``total`` raw bytes follow the frame (declared
    separately from ``length``, so a refused request can still be drained exactly)."""

    seq: int
    dst_region: Int64Array
    dst_offset: Int64Array
    length: Int64Array
    total: int


@attrs.frozen
class WriteOk:
    seq: int


@attrs.frozen
class WriteError:
    seq: int
    reason: str


Payload = (Challenge | Auth | bytes | str | ReadRequest | ReadOk | ReadError | WriteRequest | WriteOk | WriteError
           | None)


def parse_header(header: bytes | bytearray | memoryview) -> tuple[FrameType, int]:
    """Validate a 12-byte header; returns (type, payload length) within the type's limit."""
    if len(header) != HEADER.size:
        raise ProtocolError(f"frame header must be {HEADER.size} bytes, got {len(header)}")
    magic, version, type_code, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    try:
        frame_type = FrameType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_code}") from None
    if length > _LIMITS[frame_type]:
        raise ProtocolError(
            f"{frame_type.name} frame of {length} bytes exceeds the limit of {_LIMITS[frame_type]}"
        )
    return frame_type, length


def encode_frame(frame_type: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > _LIMITS[frame_type]:
        raise ProtocolError(f"{frame_type.name} payload of {len(payload)} bytes exceeds its limit")
    return HEADER.pack(MAGIC, VERSION, frame_type, len(payload)) + payload


def encode_read_request(
    seq: int, src_region: Int64Array, src_offset: Int64Array, length: Int64Array
) -> list[bytes]:
    """Header + columns as separate buffers (for ``sendmsg``; no join copy)."""
    count = len(length)
    if count > MAX_DESCRIPTORS_PER_READ:
        raise ProtocolError(f"{count} descriptors exceed {MAX_DESCRIPTORS_PER_READ} per READ frame")
    cols = [np.ascontiguousarray(c, dtype=_I8).tobytes() for c in (src_region, src_offset, length)]
    size = _READ_HEAD.size + 24 * count
    return [HEADER.pack(MAGIC, VERSION, FrameType.READ, size), _READ_HEAD.pack(seq, count), *cols]


def encode_read_ok(seq: int, total: int) -> bytes:
    return encode_frame(FrameType.READ_OK, _READ_OK.pack(seq, total))


def encode_read_error(seq: int, reason: str) -> bytes:
    raw = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
    return encode_frame(FrameType.READ_ERR, _U64.pack(seq) + raw)


def encode_write_request(
    seq: int, dst_region: Int64Array, dst_offset: Int64Array, length: Int64Array
) -> list[bytes]:
    """Header + columns as separate buffers; the caller sends ``sum(length)`` raw bytes next."""
    count = len(length)
    if count > MAX_DESCRIPTORS_PER_READ:
        raise ProtocolError(f"{count} descriptors exceed {MAX_DESCRIPTORS_PER_READ} per WRITE frame")
    total = int(length.sum()) if count else 0
    cols = [np.ascontiguousarray(c, dtype=_I8).tobytes() for c in (dst_region, dst_offset, length)]
    size = _WRITE_HEAD.size + 24 * count
    return [HEADER.pack(MAGIC, VERSION, FrameType.WRITE, size), _WRITE_HEAD.pack(seq, count, total), *cols]


def encode_write_ok(seq: int) -> bytes:
    return encode_frame(FrameType.WRITE_OK, _U64.pack(seq))


def encode_write_error(seq: int, reason: str) -> bytes:
    raw = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
    return encode_frame(FrameType.WRITE_ERR, _U64.pack(seq) + raw)


def _text(data: bytes, what: str, limit: int) -> str:
    if len(data) > limit:
        raise ProtocolError(f"{what} longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


def decode_payload(frame_type: FrameType, payload: bytes) -> Payload:
    """Decode a payload whose header already passed :func:`parse_header`."""
    if len(payload) > _LIMITS[frame_type]:
        raise ProtocolError(f"{frame_type.name} payload exceeds its limit")
    if frame_type is FrameType.CHALLENGE:
        if len(payload) < NONCE_BYTES:
            raise ProtocolError("truncated CHALLENGE")
        return Challenge(payload[:NONCE_BYTES], _text(payload[NONCE_BYTES:], "server name", MAX_NAME_BYTES))
    if frame_type is FrameType.AUTH:
        head = NONCE_BYTES + MAC_BYTES
        if len(payload) < head:
            raise ProtocolError("truncated AUTH")
        name = _text(payload[head:], "client name", MAX_NAME_BYTES)
        return Auth(payload[:NONCE_BYTES], payload[NONCE_BYTES:head], name)
    if frame_type is FrameType.AUTH_OK:
        if len(payload) != MAC_BYTES:
            raise ProtocolError("AUTH_OK must carry a 32-byte MAC")
        return payload
    if frame_type is FrameType.AUTH_FAIL:
        return _text(payload, "AUTH_FAIL reason", MAX_REASON_BYTES)
    if frame_type is FrameType.READ:
        return _decode_read(payload)
    if frame_type is FrameType.READ_OK:
        if len(payload) != _READ_OK.size:
            raise ProtocolError("READ_OK must carry 16 bytes")
        seq, total = _READ_OK.unpack(payload)
        if total >= 1 << 63:
            raise ProtocolError("READ_OK total overflows int64")
        return ReadOk(seq, total)
    if frame_type is FrameType.READ_ERR:
        if len(payload) < _U64.size:
            raise ProtocolError("truncated READ_ERR")
        return ReadError(_U64.unpack_from(payload)[0], _text(payload[8:], "READ_ERR reason", MAX_REASON_BYTES))
    if frame_type is FrameType.NOTIFY:
        return payload
    if frame_type is FrameType.WRITE:
        return _decode_write(payload)
    if frame_type is FrameType.WRITE_OK:
        if len(payload) != _U64.size:
            raise ProtocolError("WRITE_OK must carry 8 bytes")
        return WriteOk(_U64.unpack(payload)[0])
    if frame_type is FrameType.WRITE_ERR:
        if len(payload) < _U64.size:
            raise ProtocolError("truncated WRITE_ERR")
        return WriteError(_U64.unpack_from(payload)[0], _text(payload[8:], "WRITE_ERR reason", MAX_REASON_BYTES))
    if payload:
        raise ProtocolError("NOTIFY_ACK carries no payload")
    return None


def _decode_read(payload: bytes) -> ReadRequest:
    if len(payload) < _READ_HEAD.size:
        raise ProtocolError("truncated READ header")
    seq, count = _READ_HEAD.unpack_from(payload)
    if count > MAX_DESCRIPTORS_PER_READ:
        raise ProtocolError(f"READ with {count} descriptors exceeds {MAX_DESCRIPTORS_PER_READ}")
    if len(payload) != _READ_HEAD.size + 24 * count:
        raise ProtocolError(f"READ of {count} descriptors has {len(payload)} payload bytes")
    cols = np.frombuffer(payload, dtype=_I8, offset=_READ_HEAD.size).reshape(3, count)
    as_native = cols.astype(np.int64)
    return ReadRequest(seq, as_native[0], as_native[1], as_native[2])


def _decode_write(payload: bytes) -> WriteRequest:
    if len(payload) < _WRITE_HEAD.size:
        raise ProtocolError("truncated WRITE header")
    seq, count, total = _WRITE_HEAD.unpack_from(payload)
    if count > MAX_DESCRIPTORS_PER_READ:
        raise ProtocolError(f"WRITE with {count} descriptors exceeds {MAX_DESCRIPTORS_PER_READ}")
    if len(payload) != _WRITE_HEAD.size + 24 * count:
        raise ProtocolError(f"WRITE of {count} descriptors has {len(payload)} payload bytes")
    if total >= 1 << 63:
        raise ProtocolError("WRITE total overflows int64")
    cols = np.frombuffer(payload, dtype=_I8, offset=_WRITE_HEAD.size).reshape(3, count).astype(np.int64)
    return WriteRequest(seq, cols[0], cols[1], cols[2], total)


def decode_frame(data: bytes) -> tuple[FrameType, Payload]:
    """Decode one complete frame (header + payload); what the server does, minus the socket."""
    frame_type, length = parse_header(data[: HEADER.size])
    payload = data[HEADER.size :]
    if len(payload) != length:
        raise ProtocolError(f"{frame_type.name} frame declares {length} bytes, has {len(payload)}")
    return frame_type, decode_payload(frame_type, payload)


def client_mac(secret: bytes, server_nonce: bytes, client_nonce: bytes, client_name: str) -> bytes:
    msg = b"hybridxfer-tcp-v1 client\0" + server_nonce + client_nonce + client_name.encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def server_mac(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    msg = b"hybridxfer-tcp-v1 server\0" + server_nonce + client_nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()

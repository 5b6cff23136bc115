"""The notifications of a streamed transfer: subscribe, readiness, landed, abort.

Why messages of their own (magic ``HXSTR1``) rather than more kinds of the bulk control
message: a streamed request is a conversation — D subscribes to each source P rank, P
answers with readiness (pull) or with "these rows are in your memory" (push) as its
layers finish, either side may end it — and every message names the stream it belongs to
(``stream_id``, fresh per :meth:`~hybridxfer.execute.Agent.prepare_stream`), so a late
message of a cancelled stream can never be mistaken for one of its successor. One JSON
document each, readable in a debugger, never pickle.

Sizes: a notification is small (TCP caps one at 64 KiB); the only large field is the push
subscription's block tables, checked by the sender before anything is sent
(:data:`MAX_STREAM_MESSAGE_BYTES`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

import attrs

from hybridxfer.errors import InvalidArgumentError

__all__ = [
    "MAX_STREAM_MESSAGE_BYTES",
    "StreamKind",
    "StreamMessage",
    "StreamMode",
    "decode_stream",
    "encode_stream",
]

_MAGIC = b"HXSTR1"

#: Largest stream message we send: below every transport's notification cap (TCP: 64 KiB).
MAX_STREAM_MESSAGE_BYTES = 60 * 1024

StreamMode = Literal["pull", "push"]

#: ``subscribe`` / ``unsubscribe``: D to P. ``ready`` (pull: these layers are final up to
#: ``tokens_through``), ``landed`` (push: P wrote every row that readiness made movable) and
#: ``abort`` (P cannot serve the stream; ``reason`` says why): P to D.
StreamKind = Literal["subscribe", "unsubscribe", "ready", "landed", "abort"]

_KINDS = frozenset({"subscribe", "unsubscribe", "ready", "landed", "abort"})

BlockTable = Mapping[str, tuple[int, ...]]


@attrs.frozen
class StreamMessage:
    """One message of a streamed transfer of ``request_id`` (stream ``stream_id``)."""

    kind: StreamKind
    request_id: str
    stream_id: str
    #: subscribe: the D rank subscribing and whether P pushes or D pulls.
    dst_rank: int = -1
    mode: StreamMode = "pull"
    #: ready / landed: the readiness (layer names, tokens final from 0 up to this).
    layers: tuple[str, ...] = ()
    tokens_through: int = 0
    #: push subscribe: what P needs to rebuild D's schedule (see ``_stream_source``).
    src_blocks: BlockTable = attrs.field(factory=dict)
    dst_blocks: BlockTable = attrs.field(factory=dict)
    num_tokens: int | None = None
    dst_cached_tokens: int | Mapping[str, int] | None = None
    group_layers: int = 1
    coalesce: bool = True
    #: push subscribe: bytes and rows D's plan reads from this P rank (P checks its own).
    expect_bytes: int = 0
    expect_rows: int = 0
    #: abort: why.
    reason: str = ""
    #: pull subscribe: D reads only once every layer is final (bulk), so P sends one
    #: readiness then, not one per layer (a P that ignores it is still read correctly).
    final_only: bool = False


def encode_stream(message: StreamMessage) -> bytes:
    """The notification bytes. Raises :class:`InvalidArgumentError` above the size cap."""
    doc: dict[str, object] = {"kind": message.kind, "request_id": message.request_id,
                              "stream_id": message.stream_id}
    if message.kind == "subscribe":
        doc.update(dst_rank=message.dst_rank, mode=message.mode, num_tokens=message.num_tokens)
        if message.final_only:
            doc.update(final_only=True)
        if message.mode == "push":
            cached = message.dst_cached_tokens
            doc.update(src_blocks={g: list(b) for g, b in message.src_blocks.items()},
                       dst_blocks={g: list(b) for g, b in message.dst_blocks.items()},
                       dst_cached_tokens=dict(cached) if isinstance(cached, Mapping) else cached,
                       group_layers=message.group_layers, coalesce=message.coalesce,
                       expect_bytes=message.expect_bytes, expect_rows=message.expect_rows)
    elif message.kind in ("ready", "landed"):
        doc.update(layers=list(message.layers), tokens_through=message.tokens_through)
    elif message.kind == "abort":
        doc.update(reason=message.reason[:4096])
    data = _MAGIC + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_STREAM_MESSAGE_BYTES:
        raise InvalidArgumentError(
            f"stream {message.kind} message of request {message.request_id!r} is {len(data)} bytes, above the "
            f"{MAX_STREAM_MESSAGE_BYTES}-byte notification cap (block tables too long for push: use pull)")
    return data


def decode_stream(data: bytes) -> StreamMessage | None:
    """The stream message in a notification, or ``None`` if it is not a valid one."""
    if not data.startswith(_MAGIC):
        return None
    try:
        doc = json.loads(data[len(_MAGIC):])
        kind = doc["kind"]
        if kind not in _KINDS:
            return None
        mode = doc.get("mode", "pull")
        if mode not in ("pull", "push"):
            return None
        cached = doc.get("dst_cached_tokens")
        if isinstance(cached, dict):
            cached = {str(g): int(n) for g, n in cached.items()}
        elif cached is not None:
            cached = int(cached)
        num_tokens = doc.get("num_tokens")
        return StreamMessage(
            kind=kind, request_id=str(doc["request_id"]), stream_id=str(doc["stream_id"]),
            dst_rank=int(doc.get("dst_rank", -1)), mode=mode,
            layers=tuple(str(n) for n in doc.get("layers", ())), tokens_through=int(doc.get("tokens_through", 0)),
            src_blocks=_table(doc.get("src_blocks", {})), dst_blocks=_table(doc.get("dst_blocks", {})),
            num_tokens=None if num_tokens is None else int(num_tokens), dst_cached_tokens=cached,
            group_layers=int(doc.get("group_layers", 1)), coalesce=bool(doc.get("coalesce", True)),
            expect_bytes=int(doc.get("expect_bytes", 0)), expect_rows=int(doc.get("expect_rows", 0)),
            reason=str(doc.get("reason", "")), final_only=doc.get("final_only") is True)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _table(doc: object) -> dict[str, tuple[int, ...]]:
    if not isinstance(doc, dict):
        raise TypeError("a block table must be an object")
    return {str(g): tuple(int(b) for b in ids) for g, ids in doc.items()}

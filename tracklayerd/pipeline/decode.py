"""Inbox record → canonical Event, by the record's kind. Pure: no I/O, no awaits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from tracklayerd.events import Event, from_native, native_decoder
from tracklayerd.store.base import InboxRecord

Decoder = Callable[[InboxRecord], Event]


class Undecodable(Exception):
    """The stored payload cannot become an event (recorded on the event as invalid)."""


def _decode_native(record: InboxRecord) -> Event:
    try:
        native = native_decoder.decode(record.payload)
    except msgspec.MsgspecError as exc:
        raise Undecodable(f"native event no longer decodes: {exc}") from None
    received = datetime.fromtimestamp(record.received_at, tz=UTC)
    return from_native(
        native, event_id=record.message_id, source=record.source, received_at=received
    )


DECODERS: dict[str, Decoder] = {"native": _decode_native}


def decode(record: InboxRecord) -> Event:
    decoder = DECODERS.get(record.kind)
    if decoder is None:
        raise Undecodable(f"no decoder for inbox records of kind {record.kind!r}")
    return decoder(record)

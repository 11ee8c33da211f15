"""Inbox record → canonical Event, by the record's kind. Pure: no I/O, no awaits."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from tracklayerd.config import SegmentSource, Source
from tracklayerd.events import Event, from_native, native_decoder
from tracklayerd.pipeline.segment import UndecodableMessage, segment_to_event
from tracklayerd.store.base import InboxRecord

DEFAULT_MAX_DELAY_SECS = SegmentSource().max_event_delay_secs


class Undecodable(Exception):
    """The stored payload cannot become an event (recorded on the event as invalid)."""


def decode(record: InboxRecord, source: Source | None) -> Event:
    if record.kind == "native":
        try:
            native = native_decoder.decode(record.payload)
        except msgspec.MsgspecError as exc:
            raise Undecodable(f"native event no longer decodes: {exc}") from None
        received = datetime.fromtimestamp(record.received_at, tz=UTC)
        return from_native(
            native, event_id=record.message_id, source=record.source, received_at=received
        )
    if record.kind == "segment":
        max_delay = (source.max_event_delay_secs if isinstance(source, SegmentSource)
                     else DEFAULT_MAX_DELAY_SECS)
        try:
            return segment_to_event(
                record.payload, message_id=record.message_id, source=record.source,
                received_at=record.received_at, request_ip=record.request_ip,
                max_delay_secs=max_delay,
            )
        except UndecodableMessage as exc:
            raise Undecodable(str(exc)) from None
    raise Undecodable(f"no decoder for inbox records of kind {record.kind!r}")

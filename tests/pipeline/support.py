"""Inbox records built the way the Segment ingest builds them, and the pipeline run on them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from tracklayerd.config import Config, parse_config
from tracklayerd.events import Event
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.processor import Pipeline
from tracklayerd.store.base import InboxRecord, ProcessedEvent

RECEIVED = datetime(2026, 11, 20, 10, 0, 1, tzinfo=UTC)
REQUEST_IP = "198.51.100.4"
MAX_EVENT_BYTES = 32 * 1024


def inbox_record(
    message: dict[str, Any] | bytes,
    *,
    source: str = "web",
    received_at: datetime = RECEIVED,
    request_ip: str | None = REQUEST_IP,
    origin: str = "tracking_api",
    type_hint: str | None = None,
    context: Any = None,
    integrations: Any = None,
    sent_at: str | None = None,
    seq: int = 1,
) -> InboxRecord:
    """What ingest stores for one message (batch-level fields as the request carried them)."""
    raw = message if isinstance(message, bytes) else msgspec.json.encode(message)
    batch: dict[str, Any] = {"origin": origin, "type_hint": type_hint, "sent_at": sent_at}
    if context is not None:
        batch["context"] = msgspec.Raw(msgspec.json.encode(context))
    if integrations is not None:
        batch["integrations"] = msgspec.Raw(msgspec.json.encode(integrations))
    prepared = prepare(
        [raw], BatchFields(**batch), source_id=source, received_at=received_at.timestamp(),
        request_ip=request_ip, max_event_bytes=MAX_EVENT_BYTES,
    )
    assert not prepared.rejected, prepared.rejected
    (row,) = prepared.rows
    return InboxRecord(seq=seq, **msgspec.structs.asdict(row))


def default_config(**data: Any) -> Config:
    return parse_config(data, Path.cwd())


def process(record: InboxRecord, config: Config | None = None) -> ProcessedEvent:
    return Pipeline(config or default_config()).process(record)


def body_of(processed: ProcessedEvent) -> dict[str, Any]:
    assert processed.body is not None, processed
    decoded: dict[str, Any] = msgspec.json.decode(processed.body)
    return decoded


def event_of(processed: ProcessedEvent) -> Event:
    assert processed.body is not None, processed
    return msgspec.json.decode(processed.body, type=Event)


def canonical(
    message: dict[str, Any], config: Config | None = None, **record: Any
) -> Event:
    """The accepted canonical event for one Segment message."""
    processed = process(inbox_record(message, **record), config)
    assert processed.status == "accepted", (processed.status, processed.reason)
    return event_of(processed)


def track(event: str, properties: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A track call as analytics-python sends it inside a batch."""
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "properties": properties or {},
        "userId": "user-4821",
        "anonymousId": None,
        "messageId": "6f1c2b9e-3f6a-4c1e-9d1a-2b7f3c8e5a10",
        "timestamp": "2026-11-20T10:00:00.000000+00:00",
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}},
        "integrations": {},
    }
    message.update(fields)
    return message

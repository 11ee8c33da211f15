"""Turning Segment-spec messages into inbox rows: shared by the Tracking API and webhooks.

Ingest checks only what can never become valid (no type, a track without a name, no user
or anonymous id); merging batch fields, clock-skew correction and mapping happen in the
processor, on the stored bytes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import msgspec

from tracklayerd.segment_wire import (
    JSON_NULL,
    KIND,
    Envelope,
    InvalidMessage,
    check_message,
    envelope_encoder,
    probe_decoder,
)
from tracklayerd.store.base import InboxRow

_dict_decoder = msgspec.json.Decoder(dict)


@dataclass
class Prepared:
    rows: list[InboxRow] = field(default_factory=list)
    # (index, reason) of messages refused individually.
    rejected: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchFields:
    """What a request says about all of its messages."""

    origin: str
    type_hint: str | None = None
    context: msgspec.Raw = field(default_factory=msgspec.Raw)
    integrations: msgspec.Raw = field(default_factory=msgspec.Raw)
    sent_at: str | None = None
    user_agent: str | None = None


def prepare(
    raws: list[msgspec.Raw] | list[bytes],
    batch: BatchFields,
    *,
    source_id: str,
    received_at: float,
    request_ip: str | None,
    max_event_bytes: int,
) -> Prepared:
    prepared = Prepared()
    for index, raw in enumerate(raws):
        if len(raw) > max_event_bytes:
            prepared.rejected.append(
                (index, f"message is {len(raw)} bytes; the limit is {max_event_bytes}")
            )
            continue
        try:
            probe = probe_decoder.decode(raw)
            message_id = check_message(probe, batch.type_hint)
        except msgspec.ValidationError as exc:
            prepared.rejected.append((index, f"not a message object: {exc}"))
            continue
        except InvalidMessage as exc:
            prepared.rejected.append((index, str(exc)))
            continue
        message = bytes(raw)
        if probe.writeKey is not None:
            message = _without_write_key(message)
        envelope = Envelope(
            message=msgspec.Raw(message),
            origin=batch.origin,
            type=None if probe.type else batch.type_hint,
            context=batch.context or JSON_NULL,
            integrations=batch.integrations or JSON_NULL,
            sent_at=batch.sent_at,
            user_agent=batch.user_agent,
        )
        prepared.rows.append(InboxRow(
            source=source_id,
            message_id=message_id or f"tl-{uuid.uuid4()}",
            kind=KIND,
            received_at=received_at,
            payload=envelope_encoder.encode(envelope),
            request_ip=request_ip,
        ))
    return prepared


def _without_write_key(message: bytes) -> bytes:
    # The write key is a credential: it is not stored with the event.
    decoded = _dict_decoder.decode(message)
    decoded.pop("writeKey", None)
    return msgspec.json.encode(decoded)

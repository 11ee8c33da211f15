"""The Segment event spec as it crosses the wire, and how tracklayerd stores it raw.

Shared by the Tracking API and both webhook receivers (ingest) and by the processor's
decoder, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import msgspec

MESSAGE_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
SHORT_PATHS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group",
               "a": "alias", "b": "batch"}
MAX_MESSAGE_ID_CHARS = 255
KIND = "segment"
JSON_NULL = msgspec.Raw(b"null")


class MessageProbe(msgspec.Struct):
    """The few fields ingest checks; everything else is skipped, not decoded."""

    type: str | None = None
    messageId: str | int | None = None  # Segment's camelCase wire names
    userId: Any = None
    anonymousId: Any = None
    event: Any = None
    writeKey: Any = None


class BatchProbe(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None
    writeKey: str | None = None
    # Raw cannot sit in a union with None: an empty Raw means absent.
    context: msgspec.Raw = msgspec.Raw()
    integrations: msgspec.Raw = msgspec.Raw()
    sentAt: str | None = None


class Envelope(msgspec.Struct, omit_defaults=True):
    """One stored message (inbox kind "segment"): the message bytes as sent, plus what the
    request said about it. The processor merges and corrects; ingest only validates."""

    message: msgspec.Raw
    origin: str  # tracking_api | segment_webhook | rudderstack_webhook
    type: str | None = None  # from the URL path when the message has none
    # Batch-level context, merged into the message's (JSON null when the batch had none).
    context: msgspec.Raw = msgspec.field(default_factory=lambda: JSON_NULL)
    integrations: msgspec.Raw = msgspec.field(default_factory=lambda: JSON_NULL)
    sent_at: str | None = None  # batch-level sentAt
    # The request's User-Agent (Tracking API only): the browser's, for client-side libraries.
    user_agent: str | None = None


probe_decoder = msgspec.json.Decoder(MessageProbe)
batch_probe_decoder = msgspec.json.Decoder(BatchProbe)
envelope_encoder = msgspec.json.Encoder()
envelope_decoder = msgspec.json.Decoder(Envelope)


class InvalidMessage(Exception):
    """A message that can never be valid; the text says why (for the sender and the record)."""


def check_message(probe: MessageProbe, type_hint: str | None) -> str | None:
    """Validate what Segment itself requires; returns the messageId as sent (or None)."""
    message_type = probe.type or type_hint
    if message_type is None:
        raise InvalidMessage("type is missing")
    if message_type not in MESSAGE_TYPES:
        raise InvalidMessage(f"type {message_type!r} is not one of {sorted(MESSAGE_TYPES)}")
    if message_type == "track" and (not isinstance(probe.event, str) or not probe.event):
        raise InvalidMessage("a track call needs a non-empty event name")
    if _blank(probe.userId) and _blank(probe.anonymousId):
        raise InvalidMessage("userId or anonymousId is required")
    if probe.messageId is None or probe.messageId == "":
        return None
    message_id = str(probe.messageId)
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise InvalidMessage(f"messageId is longer than {MAX_MESSAGE_ID_CHARS} characters")
    return message_id


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())

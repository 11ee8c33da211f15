"""The canonical event: what every source is normalized into and what is stored.

This is the stored schema: evolve it append-only (new optional fields; never rename or
retype). :class:`NativeEvent` is the wire shape of the native API (`POST /v1/events`); it
shares the sub-structs, and the server adds what only the server may set.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Str128 = Annotated[str, Meta(max_length=128)]
Str1k = Annotated[str, Meta(max_length=1024)]
Url = Annotated[str, Meta(max_length=4096)]

MessageType = Literal["track", "identify", "page", "screen", "group", "alias"]


class _Part(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class Identity(_Part):
    """Who did it. Values arrive raw; normalization and hashing happen per destination."""

    email: Str1k | None = None
    phone: Str128 | None = None
    external_id: Str1k | None = None
    customer_id: Str1k | None = None
    user_id: Str1k | None = None
    anonymous_id: Str1k | None = None
    first_name: Str1k | None = None
    last_name: Str1k | None = None
    street: Str1k | None = None
    city: Str1k | None = None
    state: Str128 | None = None
    zip: Str128 | None = None
    country: Str128 | None = None
    date_of_birth: Str128 | None = None
    gender: Str128 | None = None
    # Click IDs and browser identifiers, sent to platforms in clear.
    fbc: Str1k | None = None
    fbp: Str1k | None = None
    fbclid: Str1k | None = None
    gclid: Str1k | None = None
    gbraid: Str1k | None = None
    wbraid: Str1k | None = None
    ttclid: Str1k | None = None
    ttp: Str1k | None = None
    sccid: Str1k | None = None
    scid: Str1k | None = None
    epik: Str1k | None = None
    rdt_cid: Str1k | None = None
    li_fat_id: Str1k | None = None
    msclkid: Str1k | None = None
    # Segment alias: the id this user was known by before (linked to user_id).
    previous_id: Str1k | None = None


class Item(_Part):
    id: Str1k | None = None
    name: Str1k | None = None
    category: Str1k | None = None
    brand: Str1k | None = None
    variant: Str1k | None = None
    price: float | None = None
    quantity: float | None = None


class Consent(_Part):
    """Consent as the sender stated it; the consent step decides per destination."""

    # Category id → granted, e.g. {"marketing": true, "analytics": false}.
    categories: dict[str, bool] = {}
    # Google consent-mode signals.
    ad_storage: bool | None = None
    analytics_storage: bool | None = None
    ad_user_data: bool | None = None
    ad_personalization: bool | None = None
    # Where the consent rules apply: ISO 3166-1 alpha-2, optionally "-" subdivision ("US-CA").
    region: Str128 | None = None
    # False when the sender stated consent without category preferences (only RudderStack
    # ids, Google signals or a location): `categories` then says nothing. True (the default)
    # keeps an empty `categories` meaning what Segment means by it: every category denied.
    categories_stated: bool = True
    # RudderStack `context.consentManagement`: the consent manager, the ids the user granted
    # and denied, and how a destination's several ids combine ("and": all, "or": any).
    provider: Str128 | None = None
    allowed: list[Str128] = []
    denied: list[Str128] = []
    strategy: Literal["and", "or"] | None = None
    # Segment `context.location` as sent (a country and a region, names or codes); the
    # consent step falls back to it when `region` is unset.
    location_country: Str128 | None = None
    location_region: Str128 | None = None


class Context(_Part):
    ip: Str128 | None = None
    user_agent: Annotated[str, Meta(max_length=2048)] | None = None
    page_url: Url | None = None
    referrer: Url | None = None
    page_title: Str1k | None = None
    locale: Str128 | None = None


EventName = Annotated[str, Meta(min_length=1, max_length=128)]
EventId = Annotated[str, Meta(min_length=1, max_length=255)]
Timestamp = datetime | int | float


class NativeEvent(_Part):
    """One event as sent to `POST /v1/events` (see docs/events.md)."""

    event: EventName
    event_id: EventId | None = None
    type: MessageType = "track"
    timestamp: Timestamp | None = None
    user: Identity = msgspec.field(default_factory=Identity)
    order_id: Annotated[str, Meta(max_length=255)] | int | None = None
    value: float | None = None
    currency: Annotated[str, Meta(max_length=16)] | None = None
    items: list[Item] = []
    consent: Consent | None = None
    context: Context = msgspec.field(default_factory=Context)
    properties: dict[str, Any] = {}


class NativeBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


class Enriched(msgspec.Struct, omit_defaults=True):
    """An identifier borrowed from an earlier event of the same person."""

    field: str
    from_event: int  # the stored event (inbox seq) it was last seen on
    seen_at: datetime


class Event(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The canonical event as stored and handed to destinations."""

    event: str
    event_id: str
    timestamp: datetime
    received_at: datetime
    source: str
    message_type: MessageType = "track"
    user: Identity = msgspec.field(default_factory=Identity)
    order_id: str | None = None
    value: float | None = None
    currency: str | None = None
    items: list[Item] = []
    consent: Consent | None = None
    context: Context = msgspec.field(default_factory=Context)
    properties: dict[str, Any] = {}
    # The name the source used, when mapping renamed it (kept so old reports keep working).
    original_name: str | None = None
    # Contract violations found by the pipeline; destinations decide what they mean.
    violations: list[str] = []
    # Recommended fields missing and other things worth a look; never a reason to reject.
    warnings: list[str] = []
    # The transport id (Segment messageId, native event_id); event_id may differ when the
    # sender gave an explicit event id for pixel deduplication.
    message_id: str | None = None
    # True when the sender gave the event id explicitly (not a generated or message id).
    explicit_event_id: bool = False
    # Segment `integrations` as sent ({"All": false, "Facebook Pixel": true, ...}).
    integrations: dict[str, Any] = {}
    # Identifiers added by identity stitching, and where each came from.
    enriched: list[Enriched] = []


def to_datetime(value: Timestamp | None, default: datetime) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or epoch seconds/milliseconds."""
    if value is None:
        return default
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    seconds = float(value)
    if seconds > 100_000_000_000:  # epoch milliseconds
        seconds /= 1000.0
    return datetime.fromtimestamp(seconds, tz=UTC)


def derived_event_id(raw: bytes) -> str:
    """The id of an event sent without one: a retry of the same bytes gets the same id."""
    return "h-" + hashlib.sha256(raw).hexdigest()[:32]


def from_native(native: NativeEvent, *, event_id: str, source: str, received_at: datetime) -> Event:
    return Event(
        event=native.event,
        event_id=event_id,
        timestamp=to_datetime(native.timestamp, received_at),
        received_at=received_at,
        source=source,
        message_type=native.type,
        user=native.user,
        order_id=None if native.order_id is None else str(native.order_id),
        value=native.value,
        currency=native.currency,
        items=native.items,
        consent=native.consent,
        context=native.context,
        properties=native.properties,
        message_id=event_id,
        explicit_event_id=native.event_id is not None,
    )


event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
native_decoder = msgspec.json.Decoder(NativeEvent)

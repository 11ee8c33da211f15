"""A stored Segment-spec message → canonical Event. Pure: no I/O, no awaits.

What Segment's own servers do on arrival happens here, on the stored bytes: batch-level
``context`` and ``integrations`` merged into the message (the message's keys win), the
clock-skew correction ``timestamp = receivedAt - (sentAt - originalTimestamp)`` with the delay
capped and never in the future, and ``context.ip`` falling back to the request's address
for client-side libraries. Then the identity fields are lifted out of traits and context.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec

from tracklayerd.events import Consent, Context, Event, Identity, MessageType
from tracklayerd.segment_wire import MESSAGE_TYPES, envelope_decoder

_dict_decoder = msgspec.json.Decoder(dict[str, Any])

# Libraries that run on a server: their request IP is the shop's server, not the shopper's,
# so it must never become the user's IP.
SERVER_LIBRARIES = ("analytics-python", "analytics-node", "analytics-ruby", "analytics-go",
                    "analytics-java", "analytics-php", "analytics-dotnet", "rudder-sdk-",
                    "@segment/analytics-node", "RudderStack")
CLICK_ID_KEYS = {
    "fbc": ("fbc", "_fbc"), "fbp": ("fbp", "_fbp"), "fbclid": ("fbclid",),
    "gclid": ("gclid",), "gbraid": ("gbraid",), "wbraid": ("wbraid",),
    "ttclid": ("ttclid",), "ttp": ("ttp", "_ttp"), "sccid": ("sccid", "ScCid"),
    "scid": ("scid", "_scid"), "epik": ("epik",), "rdt_cid": ("rdt_cid",),
    "li_fat_id": ("li_fat_id",), "msclkid": ("msclkid",),
}
MAX_FIELD = 1024
# A consent manager has tens of categories; more is junk, and a cap keeps the stored event
# (and every delivery that copies it) small.
MAX_CONSENT_IDS = 100
_NO_CONSENT = Consent(categories_stated=False)


class UndecodableMessage(Exception):
    pass


def segment_to_event(
    payload: bytes,
    *,
    message_id: str,
    source: str,
    received_at: float,
    request_ip: str | None,
    max_delay_secs: float,
) -> Event:
    try:
        envelope = envelope_decoder.decode(payload)
        message = _dict_decoder.decode(envelope.message)
        # Batch-level fields of the wrong shape are ignored, not fatal to every message.
        batch_context = _obj(msgspec.json.decode(envelope.context)) if envelope.context else {}
        batch_integrations = (
            _obj(msgspec.json.decode(envelope.integrations)) if envelope.integrations else {}
        )
    except msgspec.MsgspecError as exc:
        raise UndecodableMessage(f"stored Segment message does not decode: {exc}") from None

    context = {**batch_context, **_obj(message.get("context"))}
    integrations = {**batch_integrations, **_obj(message.get("integrations"))}
    message_type = message.get("type") or envelope.type or "track"
    if message_type not in MESSAGE_TYPES:
        raise UndecodableMessage(f"unknown message type {message_type!r}")
    message_type = cast(MessageType, message_type)
    received = datetime.fromtimestamp(received_at, tz=UTC)
    timestamp = _corrected_timestamp(
        message, envelope.sent_at, received, max_delay_secs,
        trust_timestamp=envelope.origin != "tracking_api",
    )

    properties = _obj(message.get("properties"))
    # Group traits describe the company, not the user: they stay properties, never identity.
    traits = _obj(message.get("traits")) if message_type in ("identify", "group") else {}
    identity_traits = traits if message_type == "identify" else {}
    context_traits = _obj(context.get("traits"))
    name: str = message_type
    if message_type == "track":
        # Platforms cap names at 40-128 characters; a longer one is cut, not lost.
        name = (_text(message.get("event"), 100_000) or "track")[:128]

    explicit = _text(properties.get("event_id") or properties.get("eventId")
                     or traits.get("event_id"), 255)
    return Event(
        event=name,
        event_id=explicit or message_id,
        explicit_event_id=explicit is not None,
        message_id=message_id,
        timestamp=timestamp,
        received_at=received,
        source=source,
        message_type=message_type,
        user=_identity(message, identity_traits, context_traits, properties, context),
        consent=_consent(context),
        # Only the Tracking API hears from the device itself; a webhook's request comes from
        # Segment's or RudderStack's servers.
        context=_context(message_type, context, properties,
                         request_ip if envelope.origin == "tracking_api" else None,
                         envelope.user_agent, message.get("channel")),
        properties=traits if message_type in ("identify", "group") else properties,
        integrations=integrations,
    )


def _corrected_timestamp(
    message: dict[str, Any], batch_sent_at: str | None, received: datetime,
    max_delay_secs: float, *, trust_timestamp: bool,
) -> datetime:
    # A webhook forwards events Segment/RudderStack already corrected: keep their timestamp.
    original = _when(message.get("timestamp")) if trust_timestamp else None
    if original is None:
        original = _when(message.get("originalTimestamp")) or _when(message.get("timestamp"))
    if original is None:
        return received
    sent_at = None if trust_timestamp else (
        _when(message.get("sentAt")) or _when(batch_sent_at))
    if sent_at is None:
        return min(original, received)
    delay = (sent_at - original).total_seconds()
    delay = min(max(delay, 0.0), max_delay_secs)
    return received - timedelta(seconds=delay)


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or outside what UTC can represent
        return None


def _identity(
    message: dict[str, Any], traits: dict[str, Any], context_traits: dict[str, Any],
    properties: dict[str, Any], context: dict[str, Any],
) -> Identity:
    layers = (traits, context_traits)

    def trait(*names: str, props: bool = False, limit: int = MAX_FIELD) -> str | None:
        for layer in (*layers, properties) if props else layers:
            for name in names:
                value = _text(layer.get(name), limit)
                if value:
                    return value
        return None

    address = next((a for a in (_obj(t.get("address")) for t in layers) if a), {})
    first = trait("firstName", "first_name", props=True)
    last = trait("lastName", "last_name", props=True)
    full = trait("name")
    if full and not first and not last and len(parts := full.split(None, 1)) == 2:
        first, last = parts
    ids: dict[str, str | None] = {}
    for field, keys in CLICK_ID_KEYS.items():
        ids[field] = next(
            (v for layer in (context, properties, context_traits, traits) for k in keys
             if (v := _text(layer.get(k), MAX_FIELD))), None)
    return Identity(
        email=trait("email", props=True),
        phone=trait("phone", props=True, limit=128),
        external_id=trait("external_id", "externalId"),
        customer_id=trait("customer_id", "customerId"),
        user_id=_text(message.get("userId"), MAX_FIELD),
        anonymous_id=_text(message.get("anonymousId"), MAX_FIELD),
        first_name=first,
        last_name=last,
        street=_text(address.get("street"), MAX_FIELD) or trait("street"),
        city=_text(address.get("city"), MAX_FIELD) or trait("city"),
        state=_text(address.get("state"), 128) or trait("state", limit=128),
        zip=_text(address.get("postalCode") or address.get("postal_code")
                  or address.get("zip"), 128) or trait("postalCode", "zip", limit=128),
        country=_text(address.get("country"), 128) or trait("country", limit=128),
        date_of_birth=trait("birthday", "date_of_birth", "dateOfBirth", limit=128),
        previous_id=_text(message.get("previousId"), MAX_FIELD),
        gender=trait("gender", limit=128),
        **ids,
    )


def _context(
    message_type: str, context: dict[str, Any], properties: dict[str, Any],
    request_ip: str | None, request_user_agent: str | None, channel: Any,
) -> Context:
    page = _obj(context.get("page"))
    on_page = message_type in ("page", "screen")
    ip = _text(context.get("ip"), 128)
    user_agent = _text(context.get("userAgent"), 2048)
    # What the device's own request says about it, for what the message left out.
    if _client_side(context, channel):
        ip = ip or request_ip
        user_agent = user_agent or request_user_agent
    return Context(
        ip=ip,
        user_agent=user_agent,
        page_url=_text(page.get("url") or (properties.get("url") if on_page else None), 4096),
        referrer=_text(page.get("referrer")
                       or (properties.get("referrer") if on_page else None), 4096),
        page_title=_text(page.get("title") or (properties.get("title") if on_page else None),
                         MAX_FIELD),
        locale=_text(context.get("locale"), 128),
    )


def _client_side(context: dict[str, Any], channel: Any) -> bool:
    """Whether the request came from the user's device (so its IP is the user's)."""
    if context.get("direct") is True:
        return True
    library = _text(_obj(context.get("library")).get("name"), 128) or ""
    server = "server" in (channel, context.get("channel"))
    return not (server or library.startswith(SERVER_LIBRARIES))


def _consent(context: dict[str, Any]) -> Consent | None:
    """Consent as stated in any of the formats Segment-spec senders use (docs/consent.md).

    None when nothing usable was sent: a malformed ``categoryPreferences`` is no statement,
    so region policy decides, rather than a denial nobody made or a grant nobody gave.
    """
    consent = _obj(context.get("consent"))
    management = _obj(context.get("consentManagement"))
    location = _obj(context.get("location"))
    preferences = consent.get("categoryPreferences")
    stated = isinstance(preferences, dict)
    strategy = (_text(management.get("resolutionStrategy"), 8) or "").lower()
    parsed = Consent(
        categories=({str(k): v for k, v in preferences.items() if isinstance(v, bool)}
                    if isinstance(preferences, dict) else {}),
        categories_stated=stated,
        region=_text(consent.get("region"), 128),
        provider=_text(management.get("provider"), 128),
        allowed=_consent_ids(management.get("allowedConsentIds")),
        denied=_consent_ids(management.get("deniedConsentIds")),
        strategy="or" if strategy == "or" else "and" if strategy == "and" else None,
        location_country=_text(location.get("country"), 128),
        location_region=_text(location.get("region"), 128),
        ad_storage=_signal(consent, "ad_storage", "adStorage"),
        analytics_storage=_signal(consent, "analytics_storage", "analyticsStorage"),
        ad_user_data=_signal(consent, "ad_user_data", "adUserData"),
        ad_personalization=_signal(consent, "ad_personalization", "adPersonalization"),
    )
    return parsed if parsed != _NO_CONSENT else None


def _signal(consent: dict[str, Any], *keys: str) -> bool | None:
    """A Google consent-mode signal: gtag's "granted"/"denied", or a boolean."""
    for key in keys:
        value = consent.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("granted", "denied"):
            return value.strip().lower() == "granted"
    return None


def _consent_ids(value: Any) -> list[str]:
    # RudderStack's v1.1 JavaScript SDK sent allowedConsentIds as {id: category name}.
    values = list(value) if isinstance(value, dict | list) else []
    ids: list[str] = []
    for item in values:
        text = _text(item, 128)
        if text and text not in ids:
            ids.append(text)
            if len(ids) == MAX_CONSENT_IDS:
                break
    return ids


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, limit: int) -> str | None:
    """A usable string: numbers become strings; blank, structured or oversized is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and len(value) <= limit else None

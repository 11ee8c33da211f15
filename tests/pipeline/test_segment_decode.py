"""A stored Segment message → canonical event: what Segment's servers do on arrival.

Clock-skew correction, batch-level context, identity lifted out of traits and context, the
request IP for client-side libraries only, consent, explicit event ids, and the allowlist.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from tests.pipeline.support import (
    RECEIVED,
    REQUEST_IP,
    body_of,
    canonical,
    default_config,
    event_of,
    inbox_record,
    process,
    track,
)
from tracklayerd.config import Config
from tracklayerd.events import Consent, Identity
from tracklayerd.segment_wire import Envelope, envelope_decoder, envelope_encoder
from tracklayerd.store.base import InboxRecord


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def browser(event: str = "Order Completed", **fields: Any) -> dict[str, Any]:
    """A track call as analytics.js (Analytics.js 2.0) posts it to /v1/t."""
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "properties": {},
        "anonymousId": "a1f7c3e2-5b9d-4e8a-9c21-7d3e5f60b8a4",
        "messageId": "ajs-next-1795168800000-a1f7c3e2",
        "timestamp": "2026-11-20T10:00:00.000Z",
        "context": {
            "library": {"name": "analytics.js", "version": "npm:next-1.72.0"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
            "locale": "en-GB",
        },
        "integrations": {},
        "writeKey": "wk-browser-3kX9",
        "sentAt": "2026-11-20T10:00:00.040Z",
    }
    message.update(fields)
    return message


def segment_source(**options: Any) -> Config:
    return default_config(sources={"web": {"type": "segment", **options}})


# --- clock-skew correction -------------------------------------------------------------


@pytest.mark.parametrize("device_field", ["timestamp", "originalTimestamp"])
def test_device_clock_one_hour_ahead_is_corrected(device_field: str) -> None:
    # The device believes it is 11:00; it sent the call 5 s after making it; we got it at
    # 10:00:06. The event happened 5 s before arrival, whatever the device clock says.
    message = browser(sentAt="2026-11-20T11:00:05.000Z")
    message.pop("timestamp")
    message[device_field] = "2026-11-20T11:00:00.000Z"
    event = canonical(message, received_at=utc("2026-11-20T10:00:06Z"))
    assert event.timestamp == utc("2026-11-20T10:00:01Z")


def test_device_clock_behind_is_corrected_forward() -> None:
    message = browser(timestamp="2026-11-20T07:59:58.000Z", sentAt="2026-11-20T08:00:00.000Z")
    event = canonical(message, received_at=utc("2026-11-20T10:00:01Z"))
    assert event.timestamp == utc("2026-11-20T09:59:59Z")


def test_original_timestamp_is_preferred_over_timestamp_on_the_tracking_api() -> None:
    message = browser(originalTimestamp="2026-11-20T09:59:40.000Z",
                      timestamp="2026-11-20T09:00:00.000Z",
                      sentAt="2026-11-20T09:59:50.000Z")
    assert canonical(message).timestamp == RECEIVED - timedelta(seconds=10)


def test_delay_larger_than_max_event_delay_is_clamped() -> None:
    message = browser(timestamp="2026-11-18T10:00:00.000Z", sentAt="2026-11-20T10:00:00.000Z")
    event = canonical(message, segment_source(max_event_delay_secs=3600))
    assert event.timestamp == RECEIVED - timedelta(hours=1)


def test_default_max_event_delay_is_thirty_days() -> None:
    message = browser(timestamp="2026-10-01T10:00:00.000Z", sentAt="2026-11-20T10:00:00.000Z")
    assert canonical(message).timestamp == RECEIVED - timedelta(days=30)


def test_historical_timestamp_within_max_delay_is_kept_relative_to_arrival() -> None:
    # analytics-python with an explicit timestamp two days back, sent now.
    message = track("Order Completed", timestamp="2026-11-18T10:00:00.000000+00:00")
    event = canonical(message, sent_at="2026-11-20T10:00:00.500000+00:00")
    assert event.timestamp == RECEIVED - timedelta(days=2, seconds=0.5)


def test_sent_at_before_original_timestamp_means_no_delay() -> None:
    message = browser(timestamp="2026-11-20T10:00:30.000Z", sentAt="2026-11-20T10:00:00.000Z")
    assert canonical(message).timestamp == RECEIVED


def test_without_sent_at_the_timestamp_is_kept() -> None:
    message = browser(timestamp="2026-11-20T09:30:00.000Z")
    message.pop("sentAt")
    assert canonical(message).timestamp == utc("2026-11-20T09:30:00Z")


def test_without_sent_at_a_future_timestamp_becomes_the_arrival_time() -> None:
    message = browser(timestamp="2026-11-20T12:00:00.000Z")
    message.pop("sentAt")
    assert canonical(message).timestamp == RECEIVED


def test_corrected_timestamp_is_never_after_arrival() -> None:
    message = browser(timestamp="2026-11-20T12:00:00.000Z", sentAt="2026-11-20T12:00:00.000Z")
    assert canonical(message).timestamp == RECEIVED


def test_without_any_timestamp_the_arrival_time_is_used() -> None:
    message = browser()
    message.pop("timestamp")
    assert canonical(message).timestamp == RECEIVED


def test_unparseable_timestamp_counts_as_absent() -> None:
    message = browser(timestamp="yesterday at noon")
    assert canonical(message).timestamp == RECEIVED


def test_timestamp_without_zone_is_utc_and_offsets_are_converted() -> None:
    naive = browser(timestamp="2026-11-20T09:00:00")
    naive.pop("sentAt")
    assert canonical(naive).timestamp == utc("2026-11-20T09:00:00Z")
    offset = browser(timestamp="2026-11-20T11:00:00+02:00")
    offset.pop("sentAt")
    assert canonical(offset).timestamp == utc("2026-11-20T09:00:00Z")


def test_batch_level_sent_at_applies_to_each_message() -> None:
    message = track("Order Completed", timestamp="2026-11-20T09:59:00.000000+00:00")
    event = canonical(message, sent_at="2026-11-20T09:59:30.000000+00:00")
    assert event.timestamp == RECEIVED - timedelta(seconds=30)


def test_message_sent_at_wins_over_batch_sent_at() -> None:
    message = track("Order Completed", timestamp="2026-11-20T09:59:00.000000+00:00",
                    sentAt="2026-11-20T09:59:10.000000+00:00")
    event = canonical(message, sent_at="2026-11-20T09:59:30.000000+00:00")
    assert event.timestamp == RECEIVED - timedelta(seconds=10)


@pytest.mark.parametrize("origin", ["segment_webhook", "rudderstack_webhook"])
def test_webhook_origin_keeps_the_already_corrected_timestamp(origin: str) -> None:
    # Segment/RudderStack forward the event after their own correction.
    message = browser(
        originalTimestamp="2026-11-20T10:59:50.000Z",
        sentAt="2026-11-20T10:59:55.000Z",
        receivedAt="2026-11-20T09:59:57.000Z",
        timestamp="2026-11-20T09:59:52.000Z",
    )
    event = canonical(message, origin=origin)
    assert event.timestamp == utc("2026-11-20T09:59:52Z")


def test_webhook_timestamp_in_the_future_becomes_the_arrival_time() -> None:
    message = browser(timestamp="2026-11-21T00:00:00.000Z")
    assert canonical(message, origin="segment_webhook").timestamp == RECEIVED


def test_received_at_is_the_arrival_time() -> None:
    assert canonical(browser()).received_at == RECEIVED


@pytest.mark.parametrize("edge", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_out_of_the_utc_range_counts_as_absent(edge: str) -> None:
    message = browser(timestamp=edge)
    message.pop("sentAt")
    processed = process(inbox_record(message))
    assert processed.status == "accepted"
    assert event_of(processed).timestamp == RECEIVED


# --- batch-level context ---------------------------------------------------------------


def test_batch_context_fills_in_and_message_context_keys_win() -> None:
    message = track("Product Viewed", context={
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "ip": "203.0.113.7",
    })
    event = canonical(message, context={
        "library": {"name": "analytics-node", "version": "2.1.0"},
        "ip": "192.0.2.10",
        "locale": "de-DE",
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
    })
    assert event.context.ip == "203.0.113.7"
    assert event.context.locale == "de-DE"
    assert event.context.user_agent == "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)"


def test_batch_context_library_decides_the_ip_fallback_when_the_message_has_none() -> None:
    message = track("Product Viewed", context={})
    event = canonical(message, context={"library": {"name": "analytics-node"}})
    assert event.context.ip is None


def test_batch_context_consent_and_traits_reach_each_message() -> None:
    message = track("Product Viewed", context={})
    event = canonical(message, context={
        "consent": {"categoryPreferences": {"Advertising": True}},
        "traits": {"email": "ada@example.com"},
    })
    assert event.consent == Consent(categories={"Advertising": True})
    assert event.user.email == "ada@example.com"


def test_batch_integrations_are_merged_and_message_keys_win() -> None:
    message = track("Order Completed", integrations={"Mixpanel": False, "Google Ads": True})
    event = canonical(message, integrations={"All": False, "Mixpanel": True})
    assert event.integrations == {"All": False, "Mixpanel": False, "Google Ads": True}


@pytest.mark.parametrize("junk", ["web", [1, 2], 42, True])
def test_batch_context_of_the_wrong_shape_is_ignored(junk: Any) -> None:
    message = track("Order Completed", context={"locale": "en-US"})
    event = canonical(message, context=junk, integrations=junk)
    assert event.context.locale == "en-US"
    assert event.integrations == {}


def test_message_context_of_the_wrong_shape_is_ignored() -> None:
    message = track("Order Completed", context="analytics-python", integrations=[1])
    event = canonical(message, context={"locale": "fr-FR"})
    assert event.context.locale == "fr-FR"


# --- identity --------------------------------------------------------------------------


def identify(traits: Any, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "identify", "userId": "user-4821", "traits": traits,
        "messageId": "id-1", "timestamp": "2026-11-20T10:00:00.000Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}},
    }
    message.update(fields)
    return message


def test_name_is_split_into_first_and_last_name() -> None:
    user = canonical(identify({"name": "Ada Lovelace"})).user
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")


def test_name_split_keeps_the_rest_as_last_name() -> None:
    user = canonical(identify({"name": "  Ada King Lovelace "})).user
    assert (user.first_name, user.last_name) == ("Ada", "King Lovelace")


def test_name_split_trims_repeated_spaces() -> None:
    user = canonical(identify({"name": "Ada  Lovelace"})).user
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")


def test_explicit_first_and_last_name_win_over_name() -> None:
    user = canonical(identify({"name": "Countess of Lovelace", "firstName": "Ada",
                               "lastName": "Lovelace"})).user
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")


@pytest.mark.parametrize("first, last", [("firstName", "lastName"), ("first_name", "last_name")])
def test_first_and_last_name_in_camel_or_snake_case(first: str, last: str) -> None:
    user = canonical(identify({first: " Grace ", last: "Hopper"})).user
    assert (user.first_name, user.last_name) == ("Grace", "Hopper")


def test_signed_up_properties_carry_the_identity() -> None:
    message = track("Signed Up", {"type": "organic", "first_name": "Peter", "last_name": "Gibbons",
                                  "email": "peter@initech.example", "phone": "+1 512 555 0199",
                                  "username": "pgibbons", "title": "Mr"})
    user = canonical(message).user
    assert user == Identity(email="peter@initech.example", phone="+1 512 555 0199",
                            user_id="user-4821", first_name="Peter", last_name="Gibbons")


def test_identify_traits_win_over_context_traits() -> None:
    message = identify({"email": "new@example.com"},
                       context={"traits": {"email": "old@example.com", "phone": "+1 555 0100"}})
    user = canonical(message).user
    assert (user.email, user.phone) == ("new@example.com", "+1 555 0100")


def test_track_reads_identity_from_context_traits_not_from_message_traits() -> None:
    # Only identify and group have top-level traits; a track's would be a sender mistake.
    message = track("Order Completed", traits={"email": "top@example.com"},
                    context={"traits": {"email": "ctx@example.com"}})
    assert canonical(message).user.email == "ctx@example.com"


def test_address_fields_from_the_address_trait() -> None:
    message = identify({"address": {"street": "12 St James's Square", "city": "London",
                                    "state": "LND", "postalCode": "SW1Y 4JH", "country": "GB"}})
    user = canonical(message).user
    assert (user.street, user.city, user.state, user.zip, user.country) == (
        "12 St James's Square", "London", "LND", "SW1Y 4JH", "GB")


def test_address_postal_code_in_snake_case() -> None:
    user = canonical(identify({"address": {"postal_code": "10115", "country": "DE"}})).user
    assert (user.zip, user.country) == ("10115", "DE")


def test_flat_address_traits_are_used_when_there_is_no_address_object() -> None:
    message = identify({"street": "1 Infinite Loop", "city": "Cupertino", "state": "CA",
                        "zip": "95014", "country": "US"})
    user = canonical(message).user
    assert (user.street, user.city, user.state, user.zip, user.country) == (
        "1 Infinite Loop", "Cupertino", "CA", "95014", "US")


def test_address_object_wins_over_flat_traits() -> None:
    message = identify({"address": {"city": "Paris"}, "city": "Lyon", "country": "FR"})
    user = canonical(message).user
    assert (user.city, user.country) == ("Paris", "FR")


def test_address_in_context_traits_of_a_track_call() -> None:
    message = track("Order Completed", context={"traits": {"address": {"city": "Berlin"}}})
    assert canonical(message).user.city == "Berlin"


def test_birthday_gender_and_crm_ids() -> None:
    message = identify({"birthday": "1815-12-10", "gender": "female",
                        "external_id": "crm-991", "customerId": "cus_Q2x"})
    user = canonical(message).user
    assert (user.date_of_birth, user.gender, user.external_id, user.customer_id) == (
        "1815-12-10", "female", "crm-991", "cus_Q2x")


def test_numeric_user_id_becomes_a_string() -> None:
    assert canonical(identify({}, userId=4821)).user.user_id == "4821"


def test_odd_typed_and_oversized_traits_are_dropped_not_fatal() -> None:
    traits = {
        "email": "a" * 1100 + "@example.com",
        "phone": {"number": "+1 415 555 0100"},
        "firstName": ["Ada"],
        "lastName": True,
        "name": None,
        "address": "12 St James's Square, London",
        "city": {"name": "London"},
        "state": "x" * 200,
        "birthday": [1815, 12, 10],
        "gender": False,
        "external_id": "",
        "fbp": {"v": 1},
    }
    message = identify(traits, anonymousId=["not", "an", "id"])
    processed = process(inbox_record(message))
    assert processed.status == "accepted"
    event = event_of(processed)
    assert event.user == Identity(user_id="user-4821")
    assert event.properties == traits  # kept as sent, for traces


# --- click ids -------------------------------------------------------------------------


def test_click_ids_from_context_and_properties() -> None:
    message = track(
        "Order Completed",
        {"gclid": "Cj0KCQiA-gclid", "ttclid": "E.C.P.ttclid", "msclkid": "ms-123"},
        context={"library": {"name": "analytics.js"}, "fbp": "fb.1.1700000000000.1234567890",
                 "_fbc": "fb.1.1700000000000.IwAR-fbclid", "li_fat_id": "li-fat-1"},
    )
    user = canonical(message).user
    assert (user.fbp, user.fbc, user.gclid, user.ttclid, user.msclkid, user.li_fat_id) == (
        "fb.1.1700000000000.1234567890", "fb.1.1700000000000.IwAR-fbclid", "Cj0KCQiA-gclid",
        "E.C.P.ttclid", "ms-123", "li-fat-1")


def test_click_id_in_context_wins_over_properties() -> None:
    message = track("Order Completed", {"gclid": "from-properties"},
                    context={"gclid": "from-context"})
    assert canonical(message).user.gclid == "from-context"


def test_click_id_aliases_and_context_traits() -> None:
    message = track("Order Completed", {"ScCid": "snap-click", "_ttp": "tt-browser"},
                    context={"traits": {"_scid": "snap-browser", "epik": "pin-epik"}})
    user = canonical(message).user
    assert (user.sccid, user.ttp, user.scid, user.epik) == (
        "snap-click", "tt-browser", "snap-browser", "pin-epik")


# --- request ip ------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["analytics.js", "analytics-ios", "analytics-android",
                                     "analytics-react-native"])
def test_client_side_library_gets_the_request_ip(library: str) -> None:
    message = track("Product Viewed", context={"library": {"name": library, "version": "1"}})
    assert canonical(message).context.ip == REQUEST_IP


@pytest.mark.parametrize("library", [
    "analytics-python", "analytics-node", "@segment/analytics-node", "analytics-ruby",
    "analytics-go", "analytics-java", "analytics-php", "analytics-dotnet", "rudder-sdk-node",
])
def test_server_library_never_gets_the_request_ip(library: str) -> None:
    message = track("Product Viewed", context={"library": {"name": library, "version": "1"}})
    assert canonical(message).context.ip is None


def test_context_channel_server_never_gets_the_request_ip() -> None:
    message = track("Product Viewed", context={"channel": "server",
                                               "library": {"name": "shop-backend"}})
    assert canonical(message).context.ip is None


def test_message_channel_server_never_gets_the_request_ip() -> None:
    # Top level, where Segment and RudderStack's SDKs put it.
    message = track("Product Viewed", channel="server",
                    context={"library": {"name": "shop-backend", "version": "3.2"}})
    assert canonical(message).context.ip is None


@pytest.mark.parametrize("origin", ["segment_webhook", "rudderstack_webhook"])
def test_webhook_request_ip_is_never_the_users(origin: str) -> None:
    # The request comes from Segment's or RudderStack's servers.
    message = browser(context={"library": {"name": "analytics.js"}})
    assert canonical(message, origin=origin).context.ip is None


def test_webhook_keeps_the_context_ip_it_forwards() -> None:
    message = browser(context={"library": {"name": "analytics.js"}, "ip": "203.0.113.7"})
    assert canonical(message, origin="segment_webhook").context.ip == "203.0.113.7"


def test_context_direct_asks_for_the_request_ip_even_from_a_server_library() -> None:
    message = track("Product Viewed", context={"direct": True,
                                               "library": {"name": "analytics-python"}})
    assert canonical(message).context.ip == REQUEST_IP


def test_context_ip_wins_over_the_request_ip() -> None:
    message = track("Product Viewed", context={"ip": "203.0.113.7",
                                               "library": {"name": "analytics.js"}})
    assert canonical(message).context.ip == "203.0.113.7"


def test_message_without_a_library_counts_as_client_side() -> None:
    message = track("Product Viewed", context={})
    assert canonical(message).context.ip == REQUEST_IP


def test_no_request_ip_means_no_ip() -> None:
    message = track("Product Viewed", context={"library": {"name": "analytics.js"}})
    assert canonical(message, request_ip=None).context.ip is None


# --- page context ----------------------------------------------------------------------


def test_page_context_comes_from_context_page() -> None:
    message = browser(context={
        "library": {"name": "analytics.js"},
        "page": {"url": "https://shop.example.com/cart", "referrer": "https://www.google.com/",
                 "title": "Cart | Example Shop", "path": "/cart", "search": ""},
    })
    context = canonical(message).context
    assert (context.page_url, context.referrer, context.page_title) == (
        "https://shop.example.com/cart", "https://www.google.com/", "Cart | Example Shop")


def test_page_call_without_context_page_uses_its_properties() -> None:
    message = {"type": "page", "name": "Pricing", "userId": "u-1", "messageId": "p-1",
               "properties": {"url": "https://app.example.com/pricing", "title": "Pricing",
                              "referrer": "https://app.example.com/"}}
    context = canonical(message).context
    assert (context.page_url, context.referrer, context.page_title) == (
        "https://app.example.com/pricing", "https://app.example.com/", "Pricing")


def test_track_properties_url_is_not_the_page_url() -> None:
    message = track("Product Viewed", {"url": "https://shop.example.com/p/monopoly"})
    assert canonical(message).context.page_url is None


# --- group -----------------------------------------------------------------------------


def test_group_traits_are_not_the_users_identity() -> None:
    message = {"type": "group", "groupId": "grp-initech", "userId": "user-4821",
               "messageId": "g-1", "traits": {"name": "Initech Corp",
                                              "email": "billing@initech.example",
                                              "phone": "+1 512 555 0100", "employees": 420}}
    event = canonical(message)
    assert event.user == Identity(user_id="user-4821")
    assert event.properties["name"] == "Initech Corp"


# --- consent ---------------------------------------------------------------------------


def test_consent_categories_keep_only_booleans() -> None:
    message = browser(context={"consent": {"categoryPreferences": {
        "Advertising": True, "Analytics": False, "DataSharing": "yes", "C0004": None}}})
    assert canonical(message).consent == Consent(
        categories={"Advertising": True, "Analytics": False})


def test_empty_category_preferences_is_stated_consent_not_absent() -> None:
    processed = process(inbox_record(browser(context={"consent": {"categoryPreferences": {}}})))
    assert event_of(processed).consent == Consent(categories={})
    assert body_of(processed)["consent"] == {}


@pytest.mark.parametrize("consent", [None, "granted", {"categoryPreferences": ["Advertising"]},
                                     {"defaultDestinationBehavior": "imply"}])
def test_missing_or_malformed_consent_is_no_consent_object(consent: Any) -> None:
    message = browser(context={"consent": consent})
    processed = process(inbox_record(message))
    assert event_of(processed).consent is None
    assert "consent" not in body_of(processed)


# --- ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["event_id", "eventId"])
def test_explicit_event_id_from_properties(key: str) -> None:
    message = browser(properties={key: "order-1001-purchase", "order_id": "1001"})
    processed = process(inbox_record(message))
    event = event_of(processed)
    assert (event.event_id, event.explicit_event_id, event.message_id) == (
        "order-1001-purchase", True, "ajs-next-1795168800000-a1f7c3e2")
    assert processed.event_id == "order-1001-purchase"


def test_explicit_event_id_from_identify_traits() -> None:
    event = canonical(identify({"event_id": "crm-sync-77"}))
    assert (event.event_id, event.explicit_event_id) == ("crm-sync-77", True)


def test_numeric_explicit_event_id_becomes_a_string() -> None:
    assert canonical(browser(properties={"event_id": 1001})).event_id == "1001"


@pytest.mark.parametrize("bad", ["x" * 256, "   ", {"id": "e-1"}, True])
def test_unusable_explicit_event_id_falls_back_to_the_message_id(bad: Any) -> None:
    event = canonical(browser(properties={"event_id": bad}))
    assert (event.event_id, event.explicit_event_id) == ("ajs-next-1795168800000-a1f7c3e2", False)


def test_message_id_is_the_event_id_without_an_explicit_one() -> None:
    event = canonical(browser())
    assert event.event_id == event.message_id == "ajs-next-1795168800000-a1f7c3e2"
    assert event.explicit_event_id is False


def test_missing_message_id_gets_a_generated_one() -> None:
    message = browser()
    message.pop("messageId")
    event = canonical(message)
    assert event.event_id == event.message_id
    assert event.message_id is not None and event.message_id.startswith("tl-")


def test_write_key_is_never_in_the_stored_envelope_or_the_event() -> None:
    record = inbox_record(browser())
    assert b"wk-browser-3kX9" not in record.payload
    envelope = envelope_decoder.decode(record.payload)
    assert "writeKey" not in msgspec.json.decode(envelope.message)
    processed = process(record)
    assert processed.body is not None and b"wk-browser-3kX9" not in processed.body


def test_event_name_is_trimmed_and_properties_are_kept_as_sent() -> None:
    properties = {"order_id": "1001", "nested": {"a": [1, 2.5, None, True]}}
    event = canonical(track("  Order Completed ", properties))
    assert (event.event, event.original_name) == ("purchase", "Order Completed")
    assert event.properties == properties


def test_message_type_comes_from_the_path_when_the_message_has_none() -> None:
    message = identify({"email": "ada@example.com"})
    message.pop("type")
    event = canonical(message, type_hint="identify")
    assert (event.message_type, event.event) == ("identify", "identify")
    assert event.properties == {"email": "ada@example.com"}


def test_message_type_wins_over_the_path() -> None:
    event = canonical(identify({}), type_hint="track")
    assert event.message_type == "identify"


def raw_record(payload: bytes) -> InboxRecord:
    return InboxRecord(seq=7, source="web", message_id="m-raw", kind="segment",
                       received_at=RECEIVED.timestamp(), payload=payload)


def test_stored_message_of_an_unknown_type_is_invalid_with_the_reason() -> None:
    envelope = Envelope(message=msgspec.Raw(b'{"type":"merge","userId":"u-1"}'),
                        origin="tracking_api")
    processed = process(raw_record(envelope_encoder.encode(envelope)))
    assert processed.status == "invalid"
    assert processed.reason is not None and "merge" in processed.reason
    assert (processed.inbox_seq, processed.event_id) == (7, "m-raw")


def test_stored_bytes_that_do_not_decode_are_invalid_with_the_reason() -> None:
    processed = process(raw_record(b'{"message": '))
    assert processed.status == "invalid"
    assert processed.reason is not None and "does not decode" in processed.reason


# --- allowlist -------------------------------------------------------------------------

HOOK = {"hook": {"type": "webhook", "endpoint": "http://127.0.0.1:1/hook"}}


def allowlisted(*allow: str) -> Config:
    return default_config(sources={"web": {"type": "segment", "allow": list(allow)},
                                   "app": {"type": "segment"}},
                          destinations=HOOK)


def test_allowlist_keeps_by_source_event_name_case_insensitively() -> None:
    processed = process(inbox_record(track("Order Completed")), allowlisted("order completed"))
    assert processed.status == "accepted"
    assert [d.destination for d in processed.deliveries] == ["hook"]


def test_allowlist_keeps_by_message_type() -> None:
    processed = process(inbox_record(identify({"email": "ada@example.com"})),
                        allowlisted("Order Completed", "identify"))
    assert (processed.status, processed.name) == ("accepted", "identify")


def test_allowlist_keeps_by_canonical_name() -> None:
    processed = process(inbox_record(track("Completed Order")), allowlisted("purchase"))
    assert (processed.status, processed.name) == ("accepted", "purchase")


def test_allowlist_drops_others_with_the_reason_and_keeps_the_event() -> None:
    processed = process(inbox_record(track("Product Viewed")), allowlisted("Order Completed"))
    assert processed.status == "dropped"
    assert processed.reason == "not in the allowlist of source web: 'Product Viewed' (track)"
    assert processed.deliveries == []
    assert event_of(processed).original_name == "Product Viewed"


def test_allowlist_applies_only_to_its_own_source() -> None:
    processed = process(inbox_record(track("Product Viewed"), source="app"),
                        allowlisted("Order Completed"))
    assert processed.status == "accepted"
    assert [d.destination for d in processed.deliveries] == ["hook"]

"""Property test: any message ingest accepts must never make the pipeline raise.

Ingest (``check_message``) only refuses what can never be valid, so everything else reaches
the processor: Segment keys with the wrong types, junk batch-level context, unparseable or
skewed timestamps, odd property values. Each must end as "accepted" (a canonical event that
destinations can decode) or "invalid" with a reason, never as an exception.

Integers stay within 64 bits and parseable instants within 1900-2200 here: values beyond
those ranges have their own tests (test_mapping, test_segment_decode), so this test guards
everything else without depending on the order hypothesis explores in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as record_outcome
from hypothesis import strategies as st

from tests.pipeline.support import RECEIVED, REQUEST_IP, default_config
from tracklayerd.events import Event
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.processor import Pipeline
from tracklayerd.segment_wire import MESSAGE_TYPES
from tracklayerd.store.base import InboxRecord

TYPES = sorted(MESSAGE_TYPES)

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=24))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)
numeric_text = (st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str)
                | st.sampled_from(["NaN", "-Infinity", "1e308", "-0", " 12.50 ", "1_000", "",
                                   "12,50", "0x1F"]))
numbers = st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
loose = json_values | numeric_text | numbers

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
instant_text = (
    moments.map(lambda d: d.isoformat())
    | st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                   timezones=offsets).map(lambda d: d.isoformat())
    | moments.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
    | st.text(max_size=30)
)
instants = instant_text | json_values


def some(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={key: values for key in keys})


IDENTITY_KEYS = ["email", "phone", "firstName", "first_name", "lastName", "last_name", "name",
                 "city", "state", "zip", "postalCode", "country", "birthday", "gender",
                 "external_id", "customerId", "event_id", "eventId", "fbc", "_fbc", "fbp",
                 "gclid", "ScCid", "ttclid", "msclkid", "street"]
ITEM_KEYS = ["product_id", "sku", "item_id", "id", "name", "item_name", "category", "brand",
             "variant", "price", "quantity"]
VALUE_KEYS = ["revenue", "total", "value", "currency", "order_id", "orderId", "transaction_id",
              "url", "title", "referrer", "status", *ITEM_KEYS]

addresses = some(["street", "city", "state", "postalCode", "postal_code", "zip", "country"],
                 loose) | json_values
identities = some(IDENTITY_KEYS, loose).flatmap(
    lambda d: st.fixed_dictionaries({}, optional={"address": addresses}).map(
        lambda a: {**d, **a}))
products = st.lists(some(ITEM_KEYS, loose) | json_values, max_size=4)
properties = some(VALUE_KEYS + IDENTITY_KEYS[:6], loose).flatmap(
    lambda d: st.fixed_dictionaries({}, optional={"products": products | json_values,
                                                  "items": products | json_values}).map(
        lambda p: {**d, **p}))
contexts = st.fixed_dictionaries({}, optional={
    "ip": loose,
    "userAgent": loose,
    "locale": loose,
    "library": some(["name", "version"], st.sampled_from(
        ["analytics.js", "analytics-python", "analytics-node", "analytics-ios"]) | loose)
    | json_values,
    "page": some(["url", "referrer", "title", "path"], loose) | json_values,
    "traits": identities | json_values,
    "consent": some(["categoryPreferences"],
                    st.dictionaries(st.text(max_size=8), json_values, max_size=4)
                    | json_values) | json_values,
    "direct": json_values,
    "channel": st.sampled_from(["server", "browser", "mobile"]) | json_values,
    "fbp": loose,
    "gclid": loose,
})
messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(TYPES) | st.none(),
        "userId": st.text(min_size=1, max_size=40) | json_values,
    },
    optional={
        "event": st.text(max_size=200) | json_values,
        "anonymousId": st.text(max_size=40) | json_values,
        "messageId": st.text(max_size=300) | st.integers(-(2**63), 2**63 - 1) | json_values,
        "timestamp": instants,
        "originalTimestamp": instants,
        "sentAt": instants,
        "properties": properties | json_values,
        "traits": identities | json_values,
        "context": contexts | json_values,
        "integrations": json_values,
        "writeKey": json_values,
        "channel": st.sampled_from(["server", "browser"]) | json_values,
        "name": loose,
        "groupId": loose,
        "previousId": loose,
    },
)
batches = st.fixed_dictionaries({
    "origin": st.sampled_from(["tracking_api", "segment_webhook", "rudderstack_webhook"]),
    "type_hint": st.sampled_from(TYPES) | st.none(),
    "context": st.none() | contexts | json_values,
    "integrations": st.none() | json_values,
    "sent_at": st.none() | instant_text,
})
PIPELINE = Pipeline(default_config(
    sources={"web": {"type": "segment", "max_event_delay_secs": 86400}},
    destinations={"hook": {"type": "webhook", "endpoint": "http://127.0.0.1:1/hook"}},
))


def batch_fields(batch: dict[str, Any]) -> BatchFields:
    fields: dict[str, Any] = {"origin": batch["origin"], "type_hint": batch["type_hint"],
                              "sent_at": batch["sent_at"]}
    for key in ("context", "integrations"):
        if batch[key] is not None:
            fields[key] = msgspec.Raw(msgspec.json.encode(batch[key]))
    return BatchFields(**fields)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(message=messages, batch=batches, extra=st.dictionaries(st.text(max_size=8), json_values,
                                                               max_size=3),
       skew=st.floats(-1e6, 1e6))
def test_any_message_ingest_accepts_is_accepted_or_invalid_never_an_exception(
    message: dict[str, Any], batch: dict[str, Any], extra: dict[str, Any], skew: float
) -> None:
    message = {**extra, **message}
    if message["type"] is None:
        del message["type"]
    received = RECEIVED + timedelta(seconds=skew)
    prepared = prepare(
        [msgspec.json.encode(message)], batch_fields(batch), source_id="web",
        received_at=received.timestamp(), request_ip=REQUEST_IP, max_event_bytes=32 * 1024,
    )
    if not prepared.rows:
        record_outcome("refused by ingest")
    for index, row in enumerate(prepared.rows):
        processed = PIPELINE.process(InboxRecord(seq=index + 1, **msgspec.structs.asdict(row)))
        record_outcome(processed.status)
        note(f"processed: {processed}")
        assert processed.status in ("accepted", "invalid"), processed
        if processed.status == "invalid":
            assert processed.reason
            continue
        assert processed.body is not None and processed.name
        event = msgspec.json.decode(processed.body, type=Event)
        assert event.timestamp <= event.received_at
        assert event.received_at == datetime.fromtimestamp(row.received_at, tz=UTC)
        assert [d.destination for d in processed.deliveries] == ["hook"]

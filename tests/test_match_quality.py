"""Match quality per event and destination, stored on the delivery and aggregated."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tracklayerd.config import DestinationConfig, parse_config
from tracklayerd.destinations.registry import registry
from tracklayerd.errors import ConfigError
from tracklayerd.events import Event, event_decoder
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.pipeline.quality import identifiers_present, score
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.store.sqlite import SQLiteStore


class PluginConfig(DestinationConfig, kw_only=True):
    pass


@pytest.fixture(scope="module", autouse=True)
def plugin_destination() -> None:
    # Registered exactly as a third-party package's entry point would.
    if registry().config_type("plugin_meta") is None:
        registry().register("plugin_meta", PluginConfig, platform="meta")


async def test_each_delivery_carries_its_platforms_score_and_the_summary_aggregates(
    tmp_path: Path,
) -> None:
    config = parse_config({"destinations": {
        "meta": {"type": "plugin_meta", "mode": "observe"},  # it cannot send: no factory
        "hook": {"type": "webhook", "endpoint": "https://hooks.example/x"},
    }}, tmp_path)
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    messages: list[dict[str, Any]] = [
        {"type": "track", "event": "Order Completed", "userId": "rich", "messageId": "rich",
         "properties": {"order_id": "1", "revenue": 5, "currency": "EUR"},
         "context": {"traits": {"email": "a@example.com", "phone": "+14155550100"},
                     "ip": "203.0.113.9", "userAgent": "Mozilla/5.0",
                     "fbp": "fb.1.1700000000000.1"}},
        {"type": "track", "event": "Order Completed", "anonymousId": "poor",
         "messageId": "poor", "properties": {"order_id": "2", "revenue": 5,
                                             "currency": "EUR"}},
    ]
    rows = prepare([json.dumps(m).encode() for m in messages],
                   BatchFields(origin="segment_webhook"), source_id="web", received_at=1.0,
                   request_ip=None, max_event_bytes=32768).rows
    await store.append_inbox(rows)
    processor = Processor(store, Pipeline(config))
    await processor.run_until_idle()

    summary = await store.quality_summary()
    assert [(s.destination, s.event, s.deliveries) for s in summary] == [("meta", "purchase", 2)]
    (meta,) = summary
    events = await store.events_for("web", ["rich", "poor"])
    expected = []
    for stored in events:
        assert stored.body is not None
        event: Event = event_decoder.decode(stored.body)
        expected.append(score(identifiers_present(event), "meta"))
    rich, poor = expected
    assert rich.score > poor.score
    assert meta.mean == round((rich.score + poor.score) / 2, 2)
    assert sum(meta.bands) == 2
    # Missing identifiers are counted over the deliveries lacking them, most frequent first.
    counts = Counter(m.kind for q in (rich, poor) for m in q.missing)
    assert meta.top_missing == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert meta.top_missing[0][1] == 2  # something both lack
    # The webhook has no platform: no score, so it is not in the summary.
    hook_rows = [await store.deliveries_for(s.id) for s in events]
    assert all(("hook", "pending") in r for r in hook_rows)
    await store.close()


def test_a_type_that_cannot_send_is_refused_in_live_mode(tmp_path: Path) -> None:
    # Its deliveries would wait forever with nothing to send them.
    with pytest.raises(ConfigError, match=r"destinations\.meta: type 'plugin_meta' has no "
                                          r"sending implementation.*observe"):
        parse_config({"destinations": {"meta": {"type": "plugin_meta"}}}, tmp_path)
    assert parse_config({"destinations": {"meta": {"type": "plugin_meta", "mode": "off"}}},
                        tmp_path).destinations["meta"].mode == "off"

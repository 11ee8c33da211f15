"""The native ingest API against a real server and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    TOKEN,
    auth,
    left_to_the_collector,
    make_config,
    processor_of,
    purchase,
    store_of,
)
from tracklayerd.events import Event


async def test_single_event_is_committed_before_200(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/v1/events", json=purchase("e-1"), headers=auth())
    assert resp.status == 200
    assert await resp.json() == {"success": True, "accepted": 1, "duplicates": 0}
    # A 200 means committed: a separate connection sees the row at once.
    conn = sqlite3.connect(store_of(client).path)
    rows = conn.execute("SELECT source, message_id, kind FROM inbox").fetchall()
    assert rows == [("web", "e-1", "native")]


async def test_batch_is_stored_in_order(make_client: Any) -> None:
    client = await make_client()
    events = [purchase(f"e-{i}") for i in range(50)]
    resp = await client.post("/v1/events", json={"events": events}, headers=auth())
    assert resp.status == 200
    assert await resp.json() == {"success": True, "accepted": 50, "duplicates": 0}
    assert await store_of(client).inbox_message_ids("web") == [f"e-{i}" for i in range(50)]


@pytest.mark.parametrize("body", [
    purchase("one"),
    {"events": [purchase(f"e-{i}") for i in range(5)]},
    {"events": [purchase("ok"), {"event": 5}]},
    {"event": 5},
    {"events": [{"event": 5}]},
], ids=["single", "batch", "partial-batch", "invalid-single", "invalid-batch"])
async def test_requests_are_freed_when_answered_not_left_to_the_collector(
    make_client: Any, body: Any,
) -> None:
    # E.g. a batch is first tried as one event; that attempt's exception, if kept, refers
    # to the handler's frame, which holds the request and its ~100 KB body.
    client = await make_client()
    with left_to_the_collector() as held:
        for _ in range(3):
            resp = await client.post("/v1/events", json=body, headers=auth())
            assert resp.status in (200, 400)
        resp = await client.post("/v1/events", data=b'{"event": ', headers=auth())
        assert resp.status == 400
    assert held == []


async def test_retry_with_same_event_id_is_stored_once_and_still_200(make_client: Any) -> None:
    client = await make_client()
    for _ in range(3):
        resp = await client.post("/v1/events", json=purchase("same"), headers=auth())
        assert resp.status == 200
    assert (await resp.json())["duplicates"] == 1
    batch = {"events": [purchase("same"), purchase("new"), purchase("new")]}
    resp = await client.post("/v1/events", json=batch, headers=auth())
    assert await resp.json() == {"success": True, "accepted": 3, "duplicates": 2}
    assert await store_of(client).inbox_message_ids("web") == ["same", "new"]


async def test_event_without_id_gets_a_stable_derived_id(make_client: Any) -> None:
    client = await make_client()
    body = msgspec.json.encode({"event": "lead", "user": {"email": "a@example.com"}})
    for _ in range(2):
        resp = await client.post("/v1/events", data=body, headers=auth())
        assert resp.status == 200
    ids = await store_of(client).inbox_message_ids("web")
    assert len(ids) == 1 and ids[0].startswith("h-")


async def test_missing_or_wrong_token_is_401(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/v1/events", json=purchase())
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.post("/v1/events", json=purchase(), headers=auth("wrong"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.post("/v1/events", json=purchase(), headers={"Authorization": TOKEN})
    assert resp.status == 401
    assert await store_of(client).inbox_message_ids("web") == []


async def test_rotated_tokens_route_to_their_source(make_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, sources={
        "web": {"type": "http_api", "token": ["old-key", "new-key"]},
        "app": {"type": "http_api", "token": "app-key"},
    })
    client = await make_client(config)
    for token, event_id in (("old-key", "a"), ("new-key", "b"), ("app-key", "c")):
        resp = await client.post("/v1/events", json=purchase(event_id), headers=auth(token))
        assert resp.status == 200
    assert await store_of(client).inbox_message_ids("web") == ["a", "b"]
    assert await store_of(client).inbox_message_ids("app") == ["c"]


async def test_malformed_json_is_400_and_recorded(make_client: Any) -> None:
    client = await make_client()
    # Invalid early and malformed later: still a 400 (found by the fuzz test below).
    resp = await client.post("/v1/events", data=b'{"event": null, "event_id": Infinity}',
                             headers=auth())
    assert resp.status == 400 and (await resp.json())["error"] == "malformed_json"
    resp = await client.post("/v1/events", data=b'{"event": "purchase",', headers=auth())
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "malformed_json"
    assert "truncated" in body["message"]
    rejects = await store_of(client).rejects("web")
    assert len(rejects) == 2 and all(r.startswith("malformed_json") for r in rejects)


async def test_invalid_field_is_400_with_exact_path(make_client: Any) -> None:
    client = await make_client()
    cases = [
        (purchase(user={"email": 42}), "$.user.email", "Expected `str | null`, got `int`"),
        (purchase(items=[{"id": "a"}, {"price": "ten"}]), "$.items[1].price", "Expected"),
        ({"event_id": "x"}, "$.event", "required field is missing"),
        (purchase(evnt="typo"), "$.evnt", "unknown field"),
        (purchase(event=""), "$.event", "length >= 1"),
        (purchase(timestamp="yesterday"), "$.timestamp", "Invalid"),
        ([purchase()], "$", "Expected `object`, got `array`"),
    ]
    for event, path, message in cases:
        resp = await client.post("/v1/events", json=event, headers=auth())
        assert resp.status == 400, event
        body = await resp.json()
        assert body["path"] == path
        assert message in body["message"]
    assert await store_of(client).inbox_message_ids("web") == []


async def test_partial_batch_commits_valid_events_and_lists_invalid(make_client: Any) -> None:
    client = await make_client()
    batch = {"events": [purchase("ok-1"), purchase("bad", value="12"), purchase("ok-2")]}
    resp = await client.post("/v1/events", json=batch, headers=auth())
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "path": "$.events[1].value", "message": "Expected `float | null`, got `str`"}
    ]
    assert await store_of(client).inbox_message_ids("web") == ["ok-1", "ok-2"]


async def test_batch_with_no_valid_event_is_400(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/v1/events", json={"events": [{"x": 1}]}, headers=auth())
    assert resp.status == 400
    assert (await resp.json())["rejected"][0]["path"] == "$.events[0].x"
    resp = await client.post("/v1/events", json={"events": []}, headers=auth())
    assert resp.status == 400
    resp = await client.post(
        "/v1/events", json={"events": [purchase("e")], "extra": 1}, headers=auth()
    )
    assert resp.status == 400
    assert (await resp.json())["path"] == "$.extra"


async def test_limits_answer_413(make_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, sources={"web": {
        "type": "http_api", "token": TOKEN,
        "max_event_bytes": 2000, "max_request_bytes": 5000, "max_batch_events": 5,
    }})
    client = await make_client(config)
    big = purchase("big", properties={"pad": "x" * 2000})
    resp = await client.post("/v1/events", json=big, headers=auth())
    assert resp.status == 413
    assert "limit is 2000" in (await resp.json())["message"]

    resp = await client.post("/v1/events", json={"events": [purchase("a"), big]}, headers=auth())
    assert resp.status == 413
    assert (await resp.json())["path"] == "$.events[1]"

    six = {"events": [purchase(f"n{i}") for i in range(6)]}
    resp = await client.post("/v1/events", json=six, headers=auth())
    assert resp.status == 413
    assert "limit is 5" in (await resp.json())["message"]

    fat = purchase("z", properties={"pad": "x" * 1200})
    huge = msgspec.json.encode({"events": [fat] * 4})
    assert len(huge) > 5000 and len(msgspec.json.encode(fat)) < 2000
    resp = await client.post("/v1/events", data=huge, headers=auth())
    assert resp.status == 413

    async def chunks() -> Any:
        for _ in range(30):
            yield b" " * 1000
    resp = await client.post("/v1/events", data=chunks(), headers=auth())
    assert resp.status == 413
    assert await store_of(client).inbox_message_ids("web") == []

    five = {"events": [purchase(f"n{i}") for i in range(5)]}
    resp = await client.post("/v1/events", json=five, headers=auth())
    assert resp.status == 200


async def test_store_that_cannot_commit_answers_503(make_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, storage={
        "path": str(tmp_path / "tl.sqlite3"), "busy_timeout_ms": 50,
    })
    client = await make_client(config)
    # Another process holds the write lock beyond the busy timeout.
    blocker = sqlite3.connect(store_of(client).path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        resp = await client.post("/v1/events", json=purchase("while-locked"), headers=auth())
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["success"] is False
        ready = await client.get("/readyz")
        assert ready.status == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    resp = await client.post("/v1/events", json=purchase("while-locked"), headers=auth())
    assert resp.status == 200
    assert (await client.get("/readyz")).status == 200
    assert await store_of(client).inbox_message_ids("web") == ["while-locked"]


async def test_full_store_answers_503_not_200(make_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, storage={
        "path": str(tmp_path / "tl.sqlite3"), "max_db_bytes": 160_000,
    })
    client = await make_client(config)
    statuses = []
    for i in range(200):
        resp = await client.post(
            "/v1/events", json=purchase(f"f{i}", properties={"pad": "y" * 1500}), headers=auth()
        )
        statuses.append(resp.status)
        if resp.status == 503:
            break
    assert statuses[-1] == 503 and set(statuses[:-1]) == {200}
    acknowledged = [f"f{i}" for i, s in enumerate(statuses) if s == 200]
    assert await store_of(client).inbox_message_ids("web") == acknowledged
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "full" in (await ready.json())["reason"]


async def test_backpressure_answers_503_when_queue_is_full(
    make_client: Any, tmp_path: Path
) -> None:
    config = make_config(tmp_path, storage={
        "path": str(tmp_path / "tl.sqlite3"), "max_pending_events": 3,
    })
    client = await make_client(config)
    # Nothing else waiting: a batch bigger than the bound is admitted (or it never would be).
    batch = {"events": [purchase(f"b{i}") for i in range(4)]}
    assert (await client.post("/v1/events", json=batch, headers=auth())).status == 200

    release = threading.Event()
    writer = store_of(client).writer
    held = writer.submit(lambda conn: release.wait(10), rows=3)  # the writer is busy
    try:
        resp = await client.post("/v1/events", json=purchase("over"), headers=auth())
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await client.get("/readyz")).status == 503
    finally:
        release.set()
    await held
    assert (await client.post("/v1/events", json=purchase("over"), headers=auth())).status == 200


async def test_concurrent_requests_share_commits(make_client: Any) -> None:
    client = await make_client()
    writer = store_of(client).writer
    before = writer.stats.commits
    responses = await asyncio.gather(*[
        client.post("/v1/events", json=purchase(f"c{i}"), headers=auth()) for i in range(200)
    ])
    assert [r.status for r in responses] == [200] * 200
    commits = writer.stats.commits - before
    assert commits < 200  # group commit: many requests per transaction
    assert len(await store_of(client).inbox_message_ids("web")) == 200


async def test_accepted_event_becomes_canonical(make_client: Any) -> None:
    client = await make_client()
    await client.post("/v1/events", json=purchase("p1", order_id=1001), headers=auth())
    await processor_of(client).run_until_idle()
    stored = await store_of(client).events_for("web", ["p1"])
    assert stored[0].body is not None
    event = msgspec.json.decode(stored[0].body, type=Event)
    assert event.event == "purchase" and event.order_id == "1001"
    assert event.user.email == "ada@example.com"
    assert event.timestamp.isoformat() == "2026-11-20T10:00:00+00:00"
    assert event.context.ip == "203.0.113.7"


async def test_unknown_paths_and_methods_answer_json(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/v1/events")
    assert resp.status == 405
    assert (await resp.json())["success"] is False
    resp = await client.get("/nope")
    assert resp.status == 404


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["event", "event_id", "user", "events", "value", "items",
                                        "timestamp", "context", "email", "x"]), children,
                      max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(json_values.map(json.dumps).map(str.encode), st.binary(max_size=200)))
async def test_junk_never_causes_5xx(make_client: Any, payload: bytes) -> None:
    client = await make_client()
    try:
        resp = await client.post("/v1/events", data=payload, headers=auth())
        assert resp.status in (200, 400, 413), await resp.text()
        body = await resp.json()
        assert "Traceback" not in json.dumps(body)
    finally:
        await client.close()

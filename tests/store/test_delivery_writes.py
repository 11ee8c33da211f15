"""The delivery path's writes, which group many rows per statement: each delivery still ends
exactly as its own update says, and the status counters match a recount."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from tests.web.test_status import counters, recount
from tracklayerd.store.base import (
    Attempt,
    DeliveryPlan,
    DeliveryUpdate,
    Exchange,
    IdentityChanges,
    IdentityNode,
    ProcessedEvent,
)
from tracklayerd.store.sqlite import SQLiteStore

NOW = 1_800_000_000.0
SUPPRESSED = msgspec.json.encode({"outcome": "suppressed", "rule": "category_denied:x",
                                  "reason": "no"})


def processed(i: int, *plans: DeliveryPlan) -> ProcessedEvent:
    return ProcessedEvent(inbox_seq=i, source="web", event_id=f"e{i}", status="accepted",
                          received_at=NOW, name="purchase", body=b'{"event":"purchase"}',
                          occurred_at=NOW - 5, deliveries=list(plans))


async def stored(tmp_path: Path, n: int) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    await store.commit_processed([
        processed(i, DeliveryPlan("meta", "pending", payload=f'{{"i":{i}}}'.encode(),
                                  warnings=["w"] if i % 2 else [], match_missing=["zip"],
                                  consent=b'{"outcome":"allowed","rule":"r"}'),
                  DeliveryPlan("hook", "suppressed" if i % 3 == 0 else "observed",
                               consent=SUPPRESSED if i % 3 == 0 else None))
        for i in range(1, n + 1)], "processor", n, IdentityChanges(nodes=[
            IdentityNode("email", f"h{i}", i, NOW, NOW, i, i) for i in range(1, n + 1)]),
        now=NOW)
    return store


async def test_processed_slices_keep_every_row_and_detail(tmp_path: Path) -> None:
    store = await stored(tmp_path, 600)  # more rows than one statement takes
    try:
        # Processed again (a replay of the slice): nothing changes, nothing is doubled.
        await store.commit_processed([processed(1, DeliveryPlan("meta", "pending",
                                                                payload=b"other"))],
                                     "processor", 600, now=NOW + 1)
        conn = sqlite3.connect(store.path)
        assert conn.execute("SELECT count(*), count(DISTINCT event_row) FROM deliveries"
                            ).fetchone() == (1200, 600)
        assert conn.execute("SELECT count(*) FROM identity_nodes").fetchone() == (600,)
        assert conn.execute(
            "SELECT consent_outcome, consent_rule, count(*) FROM deliveries GROUP BY 1, 2"
            " ORDER BY 1, 2").fetchall() == [
                (None, None, 400), ("allowed", None, 600),
                ("suppressed", "category_denied:x", 200)]
        conn.close()
        [meta, hook] = sorted(await store.delivery_records(7), key=lambda r: r.destination,
                              reverse=True)
        assert (meta.payload, meta.warnings, meta.match_missing) == (b'{"i":7}', ["w"], ["zip"])
        assert meta.consent == b'{"outcome":"allowed","rule":"r"}'
        assert (hook.status, hook.payload, hook.consent) == ("observed", None, None)
        assert counters(store.path)[:2] == recount(store.path)[:2]
    finally:
        await store.close()


async def test_finish_applies_each_update_as_given(tmp_path: Path) -> None:
    store = await stored(tmp_path, 300)
    try:
        leased = await store.lease_deliveries("meta", NOW + 1, 300, 60)
        assert [d.payload for d in leased[:2]] == [b'{"i":1}', b'{"i":2}']
        ids = [d.id for d in leased]
        # Most accepted, some retrying each at its own time, one dead, one filtered.
        updates = [DeliveryUpdate(id=i, status="delivered", next_attempt_at=NOW + 2)
                   for i in ids[:290]]
        updates += [DeliveryUpdate(id=i, status="retrying", next_attempt_at=NOW + 10 + k,
                                   reason="503") for k, i in enumerate(ids[290:298])]
        updates += [DeliveryUpdate(id=ids[298], status="dead", next_attempt_at=NOW + 2,
                                   reason="refused"),
                    DeliveryUpdate(id=ids[299], status="dead", next_attempt_at=NOW + 2,
                                   reason="too old", tried=False)]
        await store.finish_deliveries([
            Exchange(destination="meta", started_at=NOW + 2, http_status=200,
                     attempts=[Attempt(delivery=i, outcome="delivered") for i in ids[:299]]),
            Exchange(destination="meta", started_at=NOW + 2, sent=False,
                     attempts=[Attempt(delivery=ids[299], outcome="filtered",
                                       reason="too old")]),
        ], updates, NOW + 2)
        conn = sqlite3.connect(store.path)
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, status, attempts, next_attempt_at, last_reason, finished_at,"
            " lease_until FROM deliveries WHERE destination = 'meta'")}
        for u in updates:
            assert rows[u.id] == (u.status, int(u.tried), u.next_attempt_at, u.reason,
                                  None if u.status == "retrying" else NOW + 2, None)
        assert conn.execute("SELECT count(*), count(request) FROM attempts").fetchone() == (
            300, 299)
        assert conn.execute("SELECT events FROM requests").fetchall() == [(299,)]
        # The same delivery twice in one call: both updates apply, in order.
        again = [DeliveryUpdate(id=ids[0], status="retrying", next_attempt_at=NOW + 50),
                 DeliveryUpdate(id=ids[0], status="dead", next_attempt_at=NOW + 60,
                                reason="gave up")]
        await store.finish_deliveries([], again, NOW + 3)
        assert conn.execute("SELECT status, attempts, next_attempt_at, last_reason"
                            " FROM deliveries WHERE id = ?", (ids[0],)).fetchone() == (
            "dead", 3, NOW + 60, "gave up")
        conn.close()
        assert counters(store.path)[:2] == recount(store.path)[:2]
        assert await store.requeue("meta", ["dead"], None, NOW + 4, rebuild=True) == 3
        assert counters(store.path)[:2] == recount(store.path)[:2]
        [record] = [r for r in await store.delivery_records(1) if r.destination == "meta"]
        assert (record.status, record.payload, record.warnings) == ("pending", None, ["w"])
    finally:
        await store.close()

"""The hot paths' SQL uses indexes: no statement the processor or the scheduler runs per
slice or batch may scan a table that grows with traffic.

A scan is invisible in small tests and quadratic in production (each slice reads the whole
table): `(kind, value) IN (VALUES ...)` once made the identity lookup scan every node, and a
1M-event backlog drained at ~140 events/s. Every statement is captured from the store's own
connections while real events go through the processor and the scheduler, and SQLite's
EXPLAIN QUERY PLAN for each is checked.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from tests.conftest import make_config, purchase
from tests.fakes.webhook import FakeReceiver
from tracklayerd.destinations.registry import create_destinations
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.scheduler import Scheduler
from tracklayerd.store.base import InboxRow
from tracklayerd.store.sqlite import SQLiteStore

GROWING = ("inbox", "events", "deliveries", "identity_nodes", "dedup_keys", "requests",
           "attempts")
SCAN = re.compile(r"\bSCAN (\w+)")


def event(i: int) -> dict[str, Any]:
    return purchase(f"e{i}", order_id=f"o{i}", user={
        "email": f"u{i % 7}@example.com", "phone": f"+1 415 555 {i % 7:04d}",
        "user_id": f"user-{i % 7}", "anonymous_id": f"anon-{i}",
        "fbp": f"fb.1.1763000000000.{1000 + i}"})


def scans(db: Path, statements: list[str]) -> dict[str, list[str]]:
    """statement → the growing tables its plan scans."""
    found: dict[str, list[str]] = {}
    conn = sqlite3.connect(db)
    try:
        for sql in dict.fromkeys(statements):
            head = sql.lstrip().split(None, 1)[0].upper()
            if head not in ("SELECT", "WITH", "UPDATE", "DELETE", "INSERT"):
                continue
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            tables = [t for t in SCAN.findall(plan) if t in GROWING]
            if tables:
                found[sql[:300]] = tables
    finally:
        conn.close()
    return found


async def test_processor_and_scheduler_statements_use_indexes(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    fake = FakeReceiver()
    server = await aiohttp_server(fake.app)
    config = make_config(tmp_path, destinations={"hook": {
        "type": "webhook", "endpoint": str(server.make_url("/hook")), "batch_linger_secs": 0,
        "max_batch_events": 5}})
    store = SQLiteStore(Path(config.storage.path))
    await store.open()
    try:
        destinations = create_destinations(config)
        processor = Processor(store, Pipeline(config, destinations))
        scheduler = Scheduler(store, list(destinations.values()))

        async def ingest(first: int, count: int) -> None:
            await store.append_inbox([
                InboxRow(source="web", message_id=f"e{i}", kind="native", received_at=1.0,
                         payload=msgspec.json.encode(event(i)))
                for i in range(first, first + count)])

        # Earlier events first, so the captured slice finds identities and a ledger. (The
        # store runs no ANALYZE: the planner judges by the schema, as in production.)
        await ingest(0, 40)
        await processor.run_until_idle()
        await scheduler.run_until_idle()

        statements: list[str] = []
        await store.writer.run(lambda conn: conn.set_trace_callback(statements.append), rows=0)
        await store.reader.set_trace_callback(statements.append)
        await ingest(40, 20)
        await processor.run_until_idle()
        await scheduler.run_until_idle()
        await processor.prune(now=1e12)  # hourly, in chunks: each chunk must not scan
        await store.writer.run(lambda conn: conn.set_trace_callback(None), rows=0)
        await store.reader.set_trace_callback(None)
        await scheduler.stop(0)
        for destination in destinations.values():
            await destination.close()
    finally:
        await store.close()

    assert len(fake.event_ids) == 60
    assert any("identity_nodes" in s for s in statements)  # the capture saw the hot paths
    assert scans(Path(config.storage.path), statements) == {}

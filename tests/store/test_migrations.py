"""Upgrading stores that hold data: nothing is lost, and the status counters stay exact.

The stores are filled by the real pipeline (ingest, processor, scheduler against a fake
Meta: delivered, retried, dead, suppressed by consent, observed), then their rows are
copied into a database at an older schema version, as a store of that version would hold
them, and opened: the store migrates it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import store_of
from tests.store.support import create_at
from tests.store.test_query_plans import scans
from tests.web.test_status import EMAIL, counters, fill, recount, start
from tracklayerd.errors import StartupError
from tracklayerd.store import schema
from tracklayerd.store.sqlite import SQLiteStore

DELIVERY_KEEPS = ("id", "event_row", "destination", "status", "attempts", "next_attempt_at",
                  "lease_until", "last_reason", "updated_at", "match_quality", "match_missing",
                  "created_at", "occurred_at", "finished_at")
MOVED = ("payload", "warnings", "consent")


def copy_back(current: Path, old: Path, version: int) -> None:
    """The rows of a current store as a store at `version` (4 to 7) holds them. The
    counters are not copied: at version 7 its triggers count the rows as they go in."""
    create_at(old, version)
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS cur", (str(current),))
    conn.execute("BEGIN")
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name NOT LIKE 'status_%'")]
    for table in tables:
        columns = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
        if table == "deliveries":
            select = ", ".join(f"p.{c}" if c in MOVED else f"d.{c}" for c in columns)
            conn.execute(f"INSERT INTO main.deliveries ({', '.join(columns)}) SELECT {select}"
                         " FROM cur.deliveries d LEFT JOIN cur.delivery_details p ON p.id = d.id"
                         " ORDER BY d.id")
        else:
            names = ", ".join(columns)
            conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM cur.{table}")
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE cur")
    conn.close()


async def filled_store(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Path:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path)
    await fill(client, fake, clock)
    path = store_of(client).path
    await client.close()
    return path


def deliveries(path: Path) -> dict[int, dict[str, Any]]:
    """Every delivery with its payload, warnings and consent, whatever the version."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        details = {r["name"] for r in conn.execute("PRAGMA table_info(delivery_details)")}
        sql = ("SELECT d.*, p.payload, p.warnings, p.consent FROM deliveries d"
               " LEFT JOIN delivery_details p ON p.id = d.id" if details else
               "SELECT * FROM deliveries")
        return {r["id"]: {k: r[k] for k in (*DELIVERY_KEEPS, *MOVED)}
                for r in conn.execute(sql)}
    finally:
        conn.close()


def totals_recount(path: Path) -> dict[Any, int]:
    conn = sqlite3.connect(path)
    try:
        return {(d, s): n for d, s, n in conn.execute(
            "SELECT destination, status, count(*) FROM deliveries GROUP BY 1, 2")}
    finally:
        conn.close()


def hours_recount(path: Path) -> dict[Any, int]:
    """The hourly delivery counters by reading every row, the rule taken from the stored
    consent decision as migration 7 defined it (whatever the version)."""
    conn = sqlite3.connect(path)
    try:
        moved = conn.execute("SELECT count(*) FROM sqlite_master"
                             " WHERE name = 'delivery_details'").fetchone()[0]
        source = ("deliveries d LEFT JOIN delivery_details p ON p.id = d.id" if moved
                  else "deliveries d JOIN (SELECT id, consent FROM deliveries) p ON p.id = d.id")
        return {(h, d, s, r): n for h, d, s, r, n in conn.execute(
            "SELECT CAST(d.finished_at / 3600 AS INTEGER) * 3600, d.destination, d.status,"
            " CASE WHEN d.status = 'suppressed' AND json_valid(p.consent)"
            " AND json_extract(p.consent, '$.outcome') = 'suppressed'"
            " THEN coalesce(json_extract(p.consent, '$.rule'), '?') ELSE '' END, count(*)"
            f" FROM {source} WHERE d.finished_at IS NOT NULL GROUP BY 1, 2, 3, 4")}
    finally:
        conn.close()


async def test_upgrading_a_store_counts_what_it_already_holds(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    # What a store at the schema before the status page's counters held ...
    current = await filled_store(aiohttp_client, aiohttp_server, tmp_path)
    path = tmp_path / "v6.sqlite3"
    copy_back(current, path, 6)
    before = deliveries(path)
    # ... which the next start brings up to date.
    store = SQLiteStore(path)
    await store.open()
    try:
        assert counters(path) == recount(path)
        totals = {(c.destination, c.status): c.count
                  for c in await store.delivery_totals(["meta", "hook"])}
        assert totals == {("meta", "delivered"): 4, ("meta", "dead"): 1,
                          ("meta", "suppressed"): 1, ("hook", "observed"): 6}
        assert deliveries(path) == before
    finally:
        await store.close()


async def test_migration_8_moves_the_details_out_and_loses_nothing(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    current = await filled_store(aiohttp_client, aiohttp_server, tmp_path)
    path = tmp_path / "v7.sqlite3"
    copy_back(current, path, 7)
    conn = sqlite3.connect(path, isolation_level=None)
    # Rows the pipeline does not make: no details at all, a consent that is not JSON, a
    # suppression without a rule, and a dead letter older than finished_at (migration 4).
    event_row = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    now = time.time()
    conn.executemany(
        "INSERT INTO deliveries (event_row, destination, status, attempts, next_attempt_at,"
        " updated_at, created_at, finished_at, payload, warnings, consent)"
        " VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)", [
            (event_row, "bare", "pending", now, now, now, None, None, None, None),
            (event_row, "broken", "suppressed", now, now, now, now, None, None, "{not json"),
            (event_row, "norule", "suppressed", now, now, now, now, b'{"id":1}', "w1\nw2",
             json.dumps({"outcome": "suppressed"})),
            (event_row, "old", "dead", now, now, now, None, b"\x00\xff", None, None),
        ])
    conn.close()
    before = deliveries(path)
    counted = counters(path)
    assert counted[0] == totals_recount(path) and counted[1] == hours_recount(path)
    attempts = sqlite3.connect(path).execute("SELECT * FROM attempts ORDER BY id").fetchall()
    assert attempts

    store = SQLiteStore(path)
    await store.open()
    try:
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 8
        assert deliveries(path) == before
        assert conn.execute("SELECT * FROM attempts ORDER BY id").fetchall() == attempts
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        columns = {r[1] for r in conn.execute("PRAGMA table_info(deliveries)")}
        assert not columns & set(MOVED)
        assert conn.execute("SELECT count(*) FROM delivery_details").fetchone()[0] == sum(
            1 for d in before.values() if any(d[c] is not None for c in MOVED))
        consent = {d: (o, r) for d, o, r in conn.execute(
            "SELECT destination, consent_outcome, consent_rule FROM deliveries"
            " WHERE destination NOT IN ('meta', 'hook')")}
        assert consent == {"bare": (None, None), "broken": (None, None),
                           "norule": ("suppressed", "?"), "old": (None, None)}
        assert conn.execute(
            "SELECT consent_outcome, consent_rule FROM deliveries WHERE destination = 'meta'"
            " AND status = 'suppressed'").fetchone() == ("suppressed",
                                                         "no_consent_opt_in_region")
        conn.close()
        # The counters went through untouched, and still match a recount.
        assert counters(path) == counted
        assert counted[0] == totals_recount(path) and counted[1] == hours_recount(path)
        assert scans(path, [
            "SELECT d.id FROM deliveries d WHERE d.destination = 'meta' AND d.status = 'dead'",
            "SELECT payload FROM delivery_details WHERE id = 1"]) == {}

        # The store reads and writes the new layout: the trace, a lease (the payload by
        # key), a requeue that rebuilds (drops the payload) and an erasure (the details
        # go with their deliveries).
        sent = next(d for d in before.values()
                    if d["destination"] == "meta" and d["payload"] and d["consent"])
        record = next(r for r in await store.delivery_records(sent["event_row"])
                      if r.destination == "meta")
        assert (record.payload, record.consent) == (sent["payload"], sent["consent"].encode())
        leased = await store.lease_deliveries("bare", now + 1, 10, 30)
        assert [d.payload for d in leased] == [None]
        norule = next(r for r in await store.delivery_records(event_row)
                      if r.destination == "norule")
        assert (norule.payload, norule.warnings) == (b'{"id":1}', ["w1", "w2"])
        assert await store.requeue("norule", ["suppressed"], None, now + 2, rebuild=True,
                                   force=True) == 1
        norule = next(r for r in await store.delivery_records(event_row)
                      if r.destination == "norule")
        assert (norule.status, norule.payload, norule.warnings) == ("pending", None, ["w1", "w2"])
        report = await store.forget(emails=[EMAIL])
        assert report.deliveries >= 1
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM delivery_details WHERE id NOT IN"
                            " (SELECT id FROM deliveries)").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM delivery_details").fetchone()[0] < sum(
            1 for d in before.values() if any(d[c] is not None for c in MOVED))
        conn.close()
        assert counters(path)[0] == totals_recount(path)
        assert counters(path)[1] == hours_recount(path)
    finally:
        await store.close()


async def test_a_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "v7.sqlite3"
    create_at(path, 7)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO events (id, source, event_id, status, received_at)"
                 " VALUES (1, 'web', 'e1', 'accepted', 1.0)")
    conn.execute("INSERT INTO deliveries (event_row, destination, status, next_attempt_at,"
                 " updated_at, payload) VALUES (1, 'meta', 'pending', 1.0, 1.0, x'01')")
    conn.close()
    broken = [*schema.MIGRATIONS[:-1], schema.MIGRATIONS[-1] + "\nSELECT no_such_function();"]
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    with pytest.raises(StartupError, match="no_such_function"):
        await SQLiteStore(path).open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
    assert conn.execute("SELECT payload FROM deliveries").fetchall() == [(b"\x01",)]
    assert conn.execute("SELECT count(*) FROM sqlite_master"
                        " WHERE name IN ('delivery_details', 'deliveries_new')").fetchone() == (0,)
    conn.close()
    monkeypatch.undo()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.writer.run(
            lambda conn: conn.execute("PRAGMA foreign_keys").fetchone()[0], rows=0) == 1
        [leased] = await store.lease_deliveries("meta", 2.0, 10, 30)
        assert leased.payload == b"\x01"
    finally:
        await store.close()

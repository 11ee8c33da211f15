"""Identity stitching through the real pipeline and a real SQLite store."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tracklayerd.config import parse_config
from tracklayerd.events import Event
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.store.sqlite import SQLiteStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Shop:
    """Segment messages in, canonical events out, through ingest's prepare and the processor."""

    def __init__(self, store: SQLiteStore, tmp_path: Path, **identity: Any) -> None:
        self.store = store
        self.processor = Processor(store, Pipeline(parse_config({"identity": identity},
                                                                tmp_path)))
        self.n = 0

    async def send(self, at: datetime, **message: Any) -> str:
        self.n += 1
        message_id = f"m{self.n}"
        message = {"messageId": message_id, "timestamp": at.isoformat(), **message}
        prepared = prepare([json.dumps(message).encode()], BatchFields(origin="segment_webhook"),
                           source_id="web", received_at=at.timestamp() + 1, request_ip=None,
                           max_event_bytes=32768)
        assert prepared.rows, prepared.rejected
        await self.store.append_inbox(prepared.rows)
        await self.processor.run_until_idle()
        return message_id

    async def event(self, message_id: str) -> Event:
        (stored,) = await self.store.events_for("web", [message_id])
        assert stored.body is not None
        return msgspec.json.decode(stored.body, type=Event)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "db.sqlite3")
    await s.open()
    yield s
    await s.close()


async def test_identify_then_anonymous_track_then_purchase_is_stitched(
    store: SQLiteStore, tmp_path: Path
) -> None:
    shop = Shop(store, tmp_path)
    page = await shop.send(T0, type="track", event="Product Viewed", anonymousId="anon-1",
                           context={"fbp": "fb.1.1700000000000.111", "fbc":
                                    "fb.1.1700000000000.click"})
    ident = await shop.send(T0 + timedelta(minutes=5), type="identify", anonymousId="anon-1",
                            userId="user-1", traits={"email": " Ada@Example.com ",
                                                     "phone": "+44 20 7946 0000"})
    buy = await shop.send(T0 + timedelta(minutes=20), type="track", event="Order Completed",
                          anonymousId="anon-1", properties={"order_id": "o1", "revenue": 10,
                                                            "currency": "EUR"})
    purchase = await shop.event(buy)
    assert purchase.user.user_id == "user-1"
    assert purchase.user.email == sha("ada@example.com")  # hashed, never the raw address
    assert purchase.user.phone == sha("+442079460000")
    assert purchase.user.fbp == "fb.1.1700000000000.111"
    assert purchase.user.fbc == "fb.1.1700000000000.click"
    sources = {e.field: e.from_event for e in purchase.enriched}
    first_page = (await store.events_for("web", [page]))[0].id
    identify_row = (await store.events_for("web", [ident]))[0].id
    assert sources["user.user_id"] == identify_row
    assert sources["user.email"] == identify_row
    assert sources["user.fbp"] == first_page


async def test_click_ids_are_not_borrowed_beyond_their_window(
    store: SQLiteStore, tmp_path: Path
) -> None:
    shop = Shop(store, tmp_path, windows_days={"fbc": 7.0})
    await shop.send(T0, type="identify", userId="u", traits={"email": "a@b.example"},
                    context={"fbc": "fb.1.1.old-click"})
    late = await shop.send(T0 + timedelta(days=8), type="track", event="Order Completed",
                           userId="u")
    event = await shop.event(late)
    assert event.user.fbc is None  # 8 days > Meta's 7-day click window
    assert event.user.email == sha("a@b.example")  # within the 90-day lookback


async def test_a_shared_anonymous_id_does_not_merge_two_users(
    store: SQLiteStore, tmp_path: Path
) -> None:
    shop = Shop(store, tmp_path)
    await shop.send(T0, type="identify", anonymousId="family-pc", userId="alice",
                    traits={"email": "alice@example.com"})
    await shop.send(T0 + timedelta(minutes=1), type="identify", anonymousId="family-pc",
                    userId="bob", traits={"email": "bob@example.com"})
    bob_buys = await shop.send(T0 + timedelta(minutes=2), type="track",
                               event="Order Completed", userId="bob")
    event = await shop.event(bob_buys)
    assert event.user.email == sha("bob@example.com")
    alice_buys = await shop.send(T0 + timedelta(minutes=3), type="track",
                                 event="Order Completed", userId="alice")
    assert (await shop.event(alice_buys)).user.email == sha("alice@example.com")


async def test_alias_links_the_previous_id(store: SQLiteStore, tmp_path: Path) -> None:
    shop = Shop(store, tmp_path)
    await shop.send(T0, type="track", event="Product Added", anonymousId="old-anon",
                    context={"fbp": "fb.1.1700000000000.222"})
    await shop.send(T0 + timedelta(minutes=1), type="alias", previousId="old-anon",
                    userId="u-9")
    buy = await shop.send(T0 + timedelta(minutes=2), type="track", event="Order Completed",
                          userId="u-9")
    assert (await shop.event(buy)).user.fbp == "fb.1.1700000000000.222"


async def test_identity_can_be_disabled(store: SQLiteStore, tmp_path: Path) -> None:
    shop = Shop(store, tmp_path, enabled=False)
    await shop.send(T0, type="identify", userId="u", traits={"email": "a@b.example"})
    buy = await shop.send(T0, type="track", event="Order Completed", userId="u")
    event = await shop.event(buy)
    assert event.user.email is None and event.enriched == []


async def test_forget_removes_everything_it_reports(store: SQLiteStore, tmp_path: Path) -> None:
    shop = Shop(store, tmp_path)
    await shop.send(T0, type="track", event="Product Viewed", anonymousId="anon-x")
    await shop.send(T0, type="identify", anonymousId="anon-x", userId="gone",
                    traits={"email": "gone@example.com", "phone": "+14155550100"})
    await shop.send(T0, type="track", event="Order Completed", userId="gone",
                    properties={"order_id": "o9"})
    kept = await shop.send(T0, type="identify", userId="stays",
                           traits={"email": "stays@example.com"})
    before = await store.counts()

    def secure_delete(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA secure_delete").fetchone()[0])

    await store.writer.run(lambda conn: conn.execute("PRAGMA secure_delete = FAST"), rows=0)
    report = await store.forget(emails=["gone@example.com"],
                                email_hashes=[sha("gone@example.com")])
    assert await store.writer.run(secure_delete, rows=0) == 2  # FAST, as it was before
    after = await store.counts()
    assert report.events == 3 and report.inbox_rows == 3
    assert report.identity_nodes == 4  # anon-x, gone, email, phone
    assert after["events"] == before["events"] - report.events
    assert after["inbox"] == before["inbox"] - report.inbox_rows
    nodes = await store.load_identity([("user_id", "gone"), ("anonymous_id", "anon-x"),
                                       ("email", sha("gone@example.com"))])
    assert nodes == []
    assert [e.event_id for e in await store.events_for("web", [kept])] == [kept]
    # Erased for real: not in the tables, free pages or the WAL (secure_delete + truncate).
    raw = store.path.read_bytes() + Path(f"{store.path}-wal").read_bytes()
    assert b"gone@example.com" not in raw.lower() and b"stays@example.com" in raw.lower()

    again = await store.forget(user_ids=["gone"])
    assert again.events == again.inbox_rows == again.identity_nodes == 0


async def test_pruning_deletes_links_past_retention(store: SQLiteStore, tmp_path: Path) -> None:
    shop = Shop(store, tmp_path, retention_days=30.0)
    await shop.send(T0, type="identify", userId="old", traits={"email": "old@example.com"})
    await shop.send(T0 + timedelta(days=40), type="identify", userId="new")
    removed = await shop.processor.prune((T0 + timedelta(days=40)).timestamp())
    assert removed == 2
    assert await store.load_identity([("user_id", "old")]) == []
    assert len(await store.load_identity([("user_id", "new")])) == 1


async def test_national_phone_links_only_with_a_country(store: SQLiteStore, tmp_path: Path) -> None:
    shop = Shop(store, tmp_path)
    await shop.send(T0, type="identify", userId="uk", traits={
        "phone": "020 7946 0000", "address": {"country": "United Kingdom"}})
    await shop.send(T0, type="identify", userId="nowhere", traits={"phone": "020 7946 0001"})
    uk = await shop.send(T0, type="track", event="Order Completed", userId="uk")
    assert (await shop.event(uk)).user.phone == sha("+442079460000")
    nowhere = await shop.send(T0, type="track", event="Order Completed", userId="nowhere")
    assert (await shop.event(nowhere)).user.phone is None  # no region: never guessed


async def test_configured_default_region_reads_national_phones(
    store: SQLiteStore, tmp_path: Path
) -> None:
    shop = Shop(store, tmp_path, default_region="GB")
    await shop.send(T0, type="identify", userId="u", traits={"phone": "020 7946 0000"})
    buy = await shop.send(T0, type="track", event="Order Completed", userId="u")
    assert (await shop.event(buy)).user.phone == sha("+442079460000")

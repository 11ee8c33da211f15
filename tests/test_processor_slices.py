"""Slices processed back to back (the next read and prepared while the previous commits) give
exactly what one big slice gives: identities stitched, duplicates found and the ledger
consulted across slice boundaries; a failed commit loses and repeats nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

import tracklayerd.processor as processor_module
from tests.conftest import make_config, purchase
from tracklayerd.config import Config
from tracklayerd.errors import StoreUnavailable
from tracklayerd.pacing import Pacer
from tracklayerd.processor import CURSOR, Pipeline, Processor
from tracklayerd.store.base import InboxRow
from tracklayerd.store.sqlite import SQLiteStore

DESTINATIONS = {"hook": {"type": "webhook", "endpoint": "http://127.0.0.1:1/hook"}}


def traffic() -> list[dict[str, Any]]:
    """Events whose outcome depends on earlier ones: a person seen again with fewer
    identifiers (enriched from the graph), repeated orders (duplicates) and a merge."""
    events: list[dict[str, Any]] = []
    for i in range(24):
        person = i % 5
        user: dict[str, Any] = {"user_id": f"user-{person}"}
        if i < 5:  # first sight: every identifier
            user |= {"email": f"p{person}@example.com", "fbp": f"fb.1.1763000000000.{person}",
                     "anonymous_id": f"anon-{person}"}
        elif i % 3 == 0:
            user = {"anonymous_id": f"anon-{person}"}  # only the cookie: stitched to the user
        events.append(purchase(f"e{i}", order_id=f"o{i % 9}", user=user,
                               timestamp=f"2026-11-20T10:{i:02d}:00Z"))
    return events


async def filled(path: Path, **options: Any) -> SQLiteStore:
    store = SQLiteStore(path, **options)
    await store.open()
    await store.append_inbox([
        InboxRow(source="web", message_id=e["event_id"], kind="native", received_at=1000.0 + i,
                 payload=msgspec.json.encode(e))
        for i, e in enumerate(traffic())])
    return store


async def reference_outcome(tmp_path: Path, config: Config) -> list[tuple[Any, ...]]:
    """The traffic processed with the default slicing, nothing in its way."""
    reference = await filled(tmp_path / "reference.sqlite3")
    await Processor(reference, Pipeline(config)).run_until_idle()
    try:
        return await outcome(reference)
    finally:
        await reference.close()


def recording_pacer(senders_waiting: bool) -> tuple[Pacer, list[float]]:
    """A pacer taking a turn after every record, recording each pause it makes."""
    pauses: list[float] = []

    async def pause(secs: float) -> None:
        pauses.append(secs)
        await asyncio.sleep(0)

    return Pacer(lambda: senders_waiting, chunk_secs=0.0, sleep=pause), pauses


async def outcome(store: SQLiteStore) -> list[tuple[Any, ...]]:
    ids = [e["event_id"] for e in traffic()]
    return [(e.event_id, e.status, e.reason, e.body, await store.deliveries_for(e.id))
            for e in await store.events_for("web", ids)]


async def test_back_to_back_slices_equal_one_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, destinations=DESTINATIONS)
    one = await filled(tmp_path / "one.sqlite3")
    await Processor(one, Pipeline(config)).process_slice()  # all 24 in one slice

    monkeypatch.setattr(processor_module, "SLICE", 4)
    many = await filled(tmp_path / "many.sqlite3")
    # A turn for the loop after every record, mid-slice.
    pacer, turns = recording_pacer(senders_waiting=False)
    processor = Processor(many, Pipeline(config), pacer=pacer)
    assert await processor.process_available() == 24
    assert len(turns) == 3 * 24  # prepare, stitch and plan each gave the loop a turn
    assert await many.cursor(CURSOR) == 24

    expected = await outcome(one)
    assert [status for _, status, *_ in expected].count("duplicate") == 24 - 9
    assert await outcome(many) == expected
    await one.close()
    await many.close()


async def test_a_failed_commit_discards_the_slice_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "SLICE", 4)
    config = make_config(tmp_path, destinations=DESTINATIONS)
    expected = await reference_outcome(tmp_path, config)

    store = await filled(tmp_path / "db.sqlite3", busy_timeout_ms=30)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    committed: list[int] = []

    def lock_after_first_slice() -> None:
        committed.append(1)
        if len(committed) == 1:
            blocker.execute("BEGIN IMMEDIATE")  # the next slice's commit finds it locked

    processor = Processor(store, Pipeline(config), on_processed=lock_after_first_slice)
    with pytest.raises(StoreUnavailable, match="locked"):
        await processor.process_available()
    assert await store.cursor(CURSOR) == 4  # the first slice only
    blocker.execute("ROLLBACK")
    blocker.close()

    assert await processor.process_available() == 20
    assert await outcome(store) == expected
    await store.close()


async def test_while_senders_wait_slices_are_smaller_and_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "SLICE_CONTENDED", 5)
    config = make_config(tmp_path, destinations=DESTINATIONS)
    expected = await reference_outcome(tmp_path, config)

    store = await filled(tmp_path / "db.sqlite3")
    pacer, pauses = recording_pacer(senders_waiting=True)
    slices: list[int] = []
    processor = Processor(store, Pipeline(config), pacer=pacer,
                          on_processed=lambda: slices.append(1))
    assert await processor.process_available() == 24
    assert len(slices) == 5  # 5 + 5 + 5 + 5 + 4, not one slice of 24
    assert pauses and all(p > 0 for p in pauses) and pacer.paused_secs > 0
    assert await outcome(store) == expected
    await store.close()


async def test_a_trickle_after_a_slice_waits_for_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "SLICE", 10)
    config = make_config(tmp_path, destinations=DESTINATIONS)
    store = await filled(tmp_path / "db.sqlite3")  # 24 records
    processor = Processor(store, Pipeline(config))
    # 10, then 10 more (enough waiting), then 4 are too few to go on with at once.
    assert await processor.process_available(min_following=5) == 20
    assert await store.cursor(CURSOR) == 20
    assert await processor.process_available(min_following=5) == 4  # a first slice: any size
    assert await store.cursor(CURSOR) == 24
    await store.close()

"""The SQLite store: migrations, group commit, job isolation, PRAGMAs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.store.support import create_at
from tracklayerd.errors import StartupError, StoreUnavailable
from tracklayerd.store import schema
from tracklayerd.store.base import InboxRow
from tracklayerd.store.sqlite import SQLiteStore
from tracklayerd.threads import BACKGROUND_NICE, MAX_NICE, share_gil_with_store_threads


def row(message_id: str, source: str = "web") -> InboxRow:
    return InboxRow(source=source, message_id=message_id, kind="native", received_at=1.0,
                    payload=b"{}")


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "db.sqlite3")
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


async def test_fresh_database_is_at_latest_schema_with_explicit_pragmas(
    store: SQLiteStore,
) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"inbox", "events", "deliveries", "cursors", "ingest_rejects"} <= tables


@pytest.mark.parametrize("start", range(schema.SCHEMA_VERSION))
async def test_migrates_from_every_older_version(tmp_path: Path, start: int) -> None:
    path = tmp_path / "old.sqlite3"
    create_at(path, start)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.append_inbox([row("m1")]) == 1
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == (
            schema.SCHEMA_VERSION
        )
    finally:
        await store.close()


async def test_refuses_a_database_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    store = SQLiteStore(path)
    with pytest.raises(StartupError, match="newer than this tracklayerd knows"):
        await store.open()
    await store.close()


async def test_duplicates_are_ignored_per_source(store: SQLiteStore) -> None:
    assert await store.append_inbox([row("a"), row("b"), row("a")]) == 2
    assert await store.append_inbox([row("a"), row("a", source="app")]) == 1
    assert await store.inbox_message_ids("web") == ["a", "b"]
    assert await store.inbox_message_ids("app") == ["a"]


async def test_concurrent_appends_are_group_committed(store: SQLiteStore) -> None:
    before = store.writer.stats.commits
    results = await asyncio.gather(*[store.append_inbox([row(f"m{i}")]) for i in range(300)])
    assert results == [1] * 300
    assert store.writer.stats.commits - before < 300
    assert len(await store.inbox_message_ids("web")) == 300


async def test_appends_of_one_loop_pass_reach_the_writer_together(store: SQLiteStore) -> None:
    # Submitted without yielding to the loop in between: one hand-over to the writer thread
    # at the end of the pass, hence one group and one commit, whatever the thread's timing
    # (with the switch interval `serve` sets, the thread would otherwise take the GIL and
    # commit part of them while the rest are being submitted).
    interval = sys.getswitchinterval()
    share_gil_with_store_threads()
    try:
        for _ in range(5):
            before = store.writer.stats.commits
            futures = [store.append_inbox([row(f"p{before}-{i}")]) for i in range(300)]
            assert await asyncio.gather(*futures) == [1] * 300
            assert store.writer.stats.commits - before == 1
    finally:
        sys.setswitchinterval(interval)


async def test_a_failing_job_does_not_undo_its_group(store: SQLiteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO cursors (name, position) VALUES ('x', 1)")
        raise ValueError("bug in a job")

    good = store.append_inbox([row("kept")])
    failing = store.writer.submit(bad)
    other = store.append_inbox([row("kept-too")])
    results = await asyncio.gather(good, failing, other, return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], ValueError)
    assert await store.inbox_message_ids("web") == ["kept", "kept-too"]
    assert await store.cursor("x") == 0  # the failed job's own write was rolled back


async def test_locked_database_raises_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3", busy_timeout_ms=30)
    await store.open()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"):
            await store.append_inbox([row("x")])
        assert store.writer.stats.failed_commits == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await store.append_inbox([row("x")]) == 1
    await store.close()


async def test_close_commits_everything_already_queued(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    pending = [store.writer.submit(lambda c, i=i: c.execute(
        "INSERT INTO inbox (source, message_id, kind, received_at, payload)"
        " VALUES ('web', ?, 'native', 1, x'')", (f"q{i}",))) for i in range(50)]
    await store.close()
    await asyncio.gather(*pending)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 50
    with pytest.raises(StoreUnavailable):
        store.writer.submit(lambda c: None)


async def test_background_checkpoint_keeps_wal_bounded(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3", checkpoint_rows=100)
    await store.open()
    for batch in range(20):
        await store.append_inbox([row(f"w{batch}-{i}") for i in range(100)])
        if store._checkpoint_task is not None:
            await store._checkpoint_task
    # Each 100-row append crossed the threshold and ran a checkpoint off the commit path,
    # so the WAL was recycled instead of growing with all 2,000 rows.
    assert store.checkpoints >= 19
    wal_bytes = os.path.getsize(f"{store.path}-wal")
    await store.close()
    unbounded = SQLiteStore(
        tmp_path / "other.sqlite3", checkpoint_rows=1_000_000, checkpoint_idle_secs=3600
    )
    await unbounded.open()
    for batch in range(20):
        await unbounded.append_inbox([row(f"w{batch}-{i}") for i in range(100)])
    assert unbounded.checkpoints == 0
    assert wal_bytes < os.path.getsize(f"{unbounded.path}-wal") / 4
    await unbounded.close()


async def test_transaction_aborted_by_sqlite_retries_the_rest_of_the_group(
    tmp_path: Path,
) -> None:
    """SQLITE_FULL rolls back the whole transaction; only the job that hit it may fail."""
    # Room for the empty schema (~140 kB) and some filler; the big job cannot fit.
    store = SQLiteStore(tmp_path / "db.sqlite3", max_db_bytes=400_000)
    await store.open()
    filler = 0
    with pytest.raises(StoreUnavailable):
        while True:
            filler += 1
            await store.append_inbox([InboxRow(source="web", message_id=f"fill{filler}",
                                               kind="native", received_at=1.0,
                                               payload=b"x" * 3000)])
    loop = asyncio.get_running_loop()
    writer = store.writer

    def small(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO cursors (name, position) VALUES ('small', 1)")
        return "ok"

    def big(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO inbox (source, message_id, kind, received_at, payload)"
            " VALUES ('web', 'big', 'native', 1, ?)", (b"y" * 200_000,))

    from tracklayerd.store.writer import _Pending

    group = [_Pending(small, loop.create_future(), 1, None),
             _Pending(big, loop.create_future(), 1, None)]
    # Run the group on a second writer connection (same PRAGMAs) so both jobs share one
    # transaction deterministically; the store's own writer thread is idle meanwhile.
    conn = store._connect_writer()
    await asyncio.to_thread(writer._commit_group, conn, group, 0)
    conn.close()
    assert await group[0].future == "ok"
    with pytest.raises(StoreUnavailable, match="full"):
        await group[1].future
    await store.close()


async def test_coalesced_appends_still_count_duplicates_per_caller(store: SQLiteStore) -> None:
    assert await store.append_inbox([row("seen")]) == 1
    # Submitted together, these share one group and its statements; the duplicate forces
    # the per-job path, and each caller learns its own count.
    results = await asyncio.gather(
        store.append_inbox([row("n1"), row("n2")]),
        store.append_inbox([row("seen"), row("n3")]),
        store.append_inbox([row("n4")]),
        store.append_inbox([row("n4")]),
    )
    assert results == [2, 1, 1, 0]
    assert await store.inbox_message_ids("web") == ["seen", "n1", "n2", "n3", "n4"]


async def test_appends_larger_than_one_statement_keep_order_and_counts(
    store: SQLiteStore,
) -> None:
    # 3 x 300 rows in one group: more than one multi-row statement (256 rows) per job and
    # statements spanning jobs; one retried id sends the group down the per-job path.
    batches = [[row(f"b{b}-{i}") for i in range(300)] for b in range(3)]
    assert await asyncio.gather(*(store.append_inbox(b) for b in batches)) == [300] * 3
    retried = [row(f"c-{i}") for i in range(299)] + [row("b1-7")]
    assert await asyncio.gather(store.append_inbox(retried),
                                store.append_inbox([row("d")])) == [299, 1]
    expected = [r.message_id for b in batches for r in b] + [
        r.message_id for r in retried[:-1]] + ["d"]
    assert await store.inbox_message_ids("web") == expected


async def test_inbox_backlog_counts_from_the_cursor_and_dates_the_oldest(
    store: SQLiteStore,
) -> None:
    assert await store.inbox_backlog("processor") == (0, None)
    await store.append_inbox([
        InboxRow(source="web", message_id=f"m{i}", kind="native", received_at=100.0 + i,
                 payload=b"{}") for i in range(5)])
    assert await store.inbox_backlog("processor") == (5, 100.0)
    await store.commit_processed([], "processor", 2)  # the first two are processed
    assert await store.inbox_backlog("processor") == (3, 102.0)
    assert await store.inbox_backlog("another") == (5, 100.0)
    await store.commit_processed([], "processor", 5)
    assert await store.inbox_backlog("processor") == (0, None)


async def test_a_checkpoint_keeps_this_process_locks_on_the_database(
    store: SQLiteStore,
) -> None:
    # POSIX drops every lock a process holds on a file when it closes any descriptor of
    # it. Had the checkpoint closed one of its own, another process closing its last
    # connection would find the database unlocked, checkpoint it and delete the WAL under
    # the running writer (seen as "database disk image is malformed").
    await store.append_inbox([row(f"w{i}") for i in range(50)])
    await asyncio.to_thread(store._checkpoint)
    await store.append_inbox([row("after-checkpoint")])
    wal = store.path.with_name(store.path.name + "-wal")
    assert wal.exists()
    other = f"import sqlite3; c = sqlite3.connect({str(store.path)!r}); " \
            "c.execute('SELECT count(*) FROM inbox').fetchone(); c.close()"
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", other], check=True)
    assert wal.exists()  # the other process saw our locks: it left the WAL alone
    await store.append_inbox([row("after-other")])
    ids = await store.inbox_message_ids("web")
    assert ids[-2:] == ["after-checkpoint", "after-other"] and len(ids) == 52
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def test_background_checkpoints_run_at_a_lower_cpu_priority(store: SQLiteStore) -> None:
    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop = asyncio.get_running_loop()
    ours = nice_of_this_thread()
    theirs = await loop.run_in_executor(store._checkpointer, nice_of_this_thread)
    if sys.platform == "linux":  # where a nice value belongs to the thread
        assert theirs == min(MAX_NICE, ours + BACKGROUND_NICE)
    assert nice_of_this_thread() == ours  # the event loop's own priority is untouched
    await asyncio.to_thread(store._checkpoint)
    assert store.checkpoints >= 1

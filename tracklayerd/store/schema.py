"""SQLite schema: numbered migrations applied in order, tracked by ``PRAGMA user_version``.

Append a migration; never edit one that has shipped. Each runs in the writer's transaction.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: inbox (write-ahead queue), processor cursor, canonical events, deliveries, ingest rejects.
    """
    CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
        source TEXT NOT NULL,
        message_id TEXT NOT NULL,
        kind TEXT NOT NULL,                     -- which decoder reads payload: native, segment, ...
        received_at REAL NOT NULL,              -- unix seconds
        request_ip TEXT,
        payload BLOB NOT NULL,
        UNIQUE (source, message_id)
    );
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,                 -- the inbox seq it was processed from
        source TEXT NOT NULL,
        event_id TEXT NOT NULL,
        name TEXT,
        status TEXT NOT NULL,                   -- accepted | dropped | invalid
        reason TEXT,
        occurred_at REAL,
        received_at REAL NOT NULL,
        body BLOB
    );
    CREATE INDEX events_event_id ON events (event_id);
    CREATE INDEX events_received_at ON events (received_at);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        event_row INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        status TEXT NOT NULL,                   -- pending | in_flight | delivered | retrying
                                                -- | dead | suppressed | observed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL,
        last_reason TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (event_row, destination)
    );
    CREATE INDEX deliveries_due ON deliveries (destination, status, next_attempt_at);
    CREATE TABLE ingest_rejects (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        received_at REAL NOT NULL,
        reason TEXT NOT NULL,
        sample BLOB                             -- unused: raw input may hold personal data
    );
    CREATE INDEX ingest_rejects_source ON ingest_rejects (source, received_at);
    """,
    # 2: the identity graph (emails and phones only as SHA-256 of their normalized form).
    """
    CREATE TABLE identity_nodes (
        kind TEXT NOT NULL,                     -- user_id, anonymous_id, email, fbc, ...
        value TEXT NOT NULL,
        person INTEGER NOT NULL,                -- inbox seq of the event that began the person
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        first_event INTEGER NOT NULL,
        last_event INTEGER NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    CREATE INDEX identity_nodes_person ON identity_nodes (person);
    CREATE INDEX identity_nodes_last_seen ON identity_nodes (last_seen);
    """,
    # 3: match quality per delivery (score for the destination's platform, top missing kinds).
    """
    ALTER TABLE deliveries ADD COLUMN match_quality REAL;
    ALTER TABLE deliveries ADD COLUMN match_missing TEXT;  -- space-separated kinds
    """,
    # 4: delivery: the payload as the platform takes it, the queue index, requests sent and
    # every attempt.
    """
    ALTER TABLE deliveries ADD COLUMN payload BLOB;        -- this event's element of the batch
    ALTER TABLE deliveries ADD COLUMN warnings TEXT;       -- newline-separated
    ALTER TABLE deliveries ADD COLUMN created_at REAL;     -- the retry horizon counts from here
    ALTER TABLE deliveries ADD COLUMN occurred_at REAL;    -- the event's time (platform age limits)
    ALTER TABLE deliveries ADD COLUMN finished_at REAL;    -- delivered or dead
    UPDATE deliveries SET created_at = updated_at;
    DROP INDEX deliveries_due;
    -- Only queued rows are in it, so it stays small however many deliveries are kept, and a
    -- delivered row costs one index delete. An in_flight row's next_attempt_at is its lease
    -- expiry: a crash mid-send makes it due again.
    CREATE INDEX deliveries_queue ON deliveries (destination, next_attempt_at)
        WHERE status IN ('pending', 'retrying', 'in_flight');
    CREATE INDEX deliveries_destination_status ON deliveries (destination, status);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL,
        events INTEGER NOT NULL,
        http_status INTEGER,                   -- NULL: no answer (see error)
        response TEXT,                         -- the platform's body, verbatim (truncated)
        error TEXT                             -- transport failure, when there was no answer
    );
    CREATE INDEX requests_destination ON requests (destination, started_at);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        request INTEGER,                       -- NULL: decided without sending (too old, ...)
        at REAL NOT NULL,
        outcome TEXT NOT NULL,                 -- delivered | retry | rejected | split | filtered
        reason TEXT
    );
    CREATE INDEX attempts_delivery ON attempts (delivery);
    """,
    # 5: business deduplication across sources, and pixel-dedup readiness per event.
    """
    CREATE TABLE dedup_keys (
        key TEXT PRIMARY KEY,                  -- canonical name, "order" or "event", value
        event_row INTEGER NOT NULL,            -- the first event that claimed it
        source TEXT NOT NULL,
        seen_at REAL NOT NULL                  -- when that event was received
    ) WITHOUT ROWID;
    CREATE INDEX dedup_keys_seen_at ON dedup_keys (seen_at);
    ALTER TABLE events ADD COLUMN duplicate_of INTEGER;  -- the event row this one repeats
    ALTER TABLE events ADD COLUMN explicit_id INTEGER;   -- 1: the sender set the event id
    CREATE INDEX events_duplicate_of ON events (duplicate_of) WHERE duplicate_of IS NOT NULL;
    """,
    # 6: the consent decision behind each delivery (outcome, rule, reason, region; JSON).
    """
    ALTER TABLE deliveries ADD COLUMN consent TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION inside the caller's transaction.

    Returns (from, to). Refuses a database written by a newer tracklayerd.
    """
    start = current_version(conn)
    if start > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {start} is newer than this tracklayerd knows "
            f"({SCHEMA_VERSION}); upgrade tracklayerd or restore a matching backup"
        )
    for number in range(start + 1, SCHEMA_VERSION + 1):
        for statement in _statements(MIGRATIONS[number - 1]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    return start, SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT the surrounding transaction; split instead.
    parts: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            parts.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        parts.append(buffer.strip())
    return [p for p in parts if p]

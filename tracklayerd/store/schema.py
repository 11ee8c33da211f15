"""SQLite schema: numbered migrations applied in order, tracked by ``PRAGMA user_version``.

Append a migration; never edit one that has shipped. They run in one transaction, with
foreign keys off (upgrade()).
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
    # 7: the status page (/-/status). Hourly counters and per-state totals kept by triggers
    # in the transaction that writes the rows they count, so the page reads a few hundred
    # rows however many events are stored (aggregating a day of events at query time took
    # seconds at 1M events). Hourly rows older than 35 days are dropped as new events come.
    # Hours are unix seconds at the start of the hour (UTC).
    """
    CREATE TABLE status_event_hours (
        hour INTEGER NOT NULL,                 -- when received
        source TEXT NOT NULL,
        status TEXT NOT NULL,                  -- accepted | dropped | invalid | duplicate
        name TEXT NOT NULL,                    -- '' when none
        explicit INTEGER NOT NULL,             -- 1: the sender set the event id
        events INTEGER NOT NULL,
        PRIMARY KEY (hour, source, status, name, explicit)
    ) WITHOUT ROWID;
    CREATE TABLE status_reject_hours (
        hour INTEGER NOT NULL,
        source TEXT NOT NULL,
        rejects INTEGER NOT NULL,
        PRIMARY KEY (hour, source)
    ) WITHOUT ROWID;
    CREATE TABLE status_delivery_hours (
        hour INTEGER NOT NULL,                 -- when finished (terminal states only)
        destination TEXT NOT NULL,
        status TEXT NOT NULL,
        rule TEXT NOT NULL,                    -- suppressed by consent: its rule; else ''
        deliveries INTEGER NOT NULL,
        PRIMARY KEY (hour, destination, status, rule)
    ) WITHOUT ROWID;
    CREATE TABLE status_delivery_totals (
        destination TEXT NOT NULL,
        status TEXT NOT NULL,                  -- every state, queued ones included
        deliveries INTEGER NOT NULL,
        PRIMARY KEY (destination, status)
    ) WITHOUT ROWID;
    -- Each trigger does one thing and fires only when it has something to count: taking a
    -- delivery for sending (pending -> in_flight) touches the totals alone.
    CREATE TRIGGER status_event_insert AFTER INSERT ON events BEGIN
        INSERT INTO status_event_hours VALUES (CAST(NEW.received_at / 3600 AS INTEGER) * 3600,
            NEW.source, NEW.status, coalesce(NEW.name, ''), coalesce(NEW.explicit_id, 0), 1)
            ON CONFLICT (hour, source, status, name, explicit) DO UPDATE SET events = events + 1;
    END;
    CREATE TRIGGER status_event_delete AFTER DELETE ON events BEGIN
        UPDATE status_event_hours SET events = events - 1
            WHERE hour = CAST(OLD.received_at / 3600 AS INTEGER) * 3600 AND source = OLD.source
            AND status = OLD.status AND name = coalesce(OLD.name, '')
            AND explicit = coalesce(OLD.explicit_id, 0);
    END;
    -- A new hourly row appears a few times an hour: the moment to drop the old ones.
    CREATE TRIGGER status_hours_prune AFTER INSERT ON status_event_hours BEGIN
        DELETE FROM status_event_hours WHERE hour < NEW.hour - 35 * 86400;
        DELETE FROM status_reject_hours WHERE hour < NEW.hour - 35 * 86400;
        DELETE FROM status_delivery_hours WHERE hour < NEW.hour - 35 * 86400;
    END;
    CREATE TRIGGER status_reject_insert AFTER INSERT ON ingest_rejects BEGIN
        INSERT INTO status_reject_hours VALUES (CAST(NEW.received_at / 3600 AS INTEGER) * 3600,
            NEW.source, 1) ON CONFLICT (hour, source) DO UPDATE SET rejects = rejects + 1;
    END;
    CREATE TRIGGER status_delivery_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO status_delivery_totals VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_insert_finished AFTER INSERT ON deliveries
        WHEN NEW.finished_at IS NOT NULL BEGIN
        INSERT INTO status_delivery_hours VALUES (
            CAST(NEW.finished_at / 3600 AS INTEGER) * 3600, NEW.destination, NEW.status,
            CASE WHEN NEW.status = 'suppressed' AND json_valid(NEW.consent)
                AND json_extract(NEW.consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(NEW.consent, '$.rule'), '?') ELSE '' END, 1)
            ON CONFLICT (hour, destination, status, rule) DO UPDATE
            SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_state AFTER UPDATE OF status ON deliveries
        WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE status_delivery_totals SET deliveries = deliveries - 1
            WHERE destination = OLD.destination AND status = OLD.status;
        INSERT INTO status_delivery_totals VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_finish AFTER UPDATE OF status, finished_at ON deliveries
        WHEN (OLD.finished_at IS NOT NULL OR NEW.finished_at IS NOT NULL)
        AND (OLD.status IS NOT NEW.status OR OLD.finished_at IS NOT NEW.finished_at) BEGIN
        UPDATE status_delivery_hours SET deliveries = deliveries - 1
            WHERE OLD.finished_at IS NOT NULL
            AND hour = CAST(OLD.finished_at / 3600 AS INTEGER) * 3600
            AND destination = OLD.destination AND status = OLD.status
            AND rule = CASE WHEN OLD.status = 'suppressed' AND json_valid(OLD.consent)
                AND json_extract(OLD.consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(OLD.consent, '$.rule'), '?') ELSE '' END;
        INSERT INTO status_delivery_hours SELECT
            CAST(NEW.finished_at / 3600 AS INTEGER) * 3600, NEW.destination, NEW.status,
            CASE WHEN NEW.status = 'suppressed' AND json_valid(NEW.consent)
                AND json_extract(NEW.consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(NEW.consent, '$.rule'), '?') ELSE '' END, 1
            WHERE NEW.finished_at IS NOT NULL
            ON CONFLICT (hour, destination, status, rule) DO UPDATE
            SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_delete AFTER DELETE ON deliveries BEGIN
        UPDATE status_delivery_totals SET deliveries = deliveries - 1
            WHERE destination = OLD.destination AND status = OLD.status;
        UPDATE status_delivery_hours SET deliveries = deliveries - 1
            WHERE OLD.finished_at IS NOT NULL
            AND hour = CAST(OLD.finished_at / 3600 AS INTEGER) * 3600
            AND destination = OLD.destination AND status = OLD.status
            AND rule = CASE WHEN OLD.status = 'suppressed' AND json_valid(OLD.consent)
                AND json_extract(OLD.consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(OLD.consent, '$.rule'), '?') ELSE '' END;
    END;
    -- The latest finished deliveries of a destination and state (latency, dead letters) and
    -- the oldest queued one, from the index alone. It has (destination, status) as its
    -- prefix, so it serves everything the index it replaces did.
    CREATE INDEX deliveries_finished ON deliveries (destination, status, finished_at, created_at);
    -- Requests that got no 2xx answer: few, so the latest errors are found without reading
    -- the accepted ones.
    CREATE INDEX requests_failed ON requests (destination, started_at)
        WHERE coalesce(http_status, 0) NOT BETWEEN 200 AND 299;
    -- What is already stored: every delivery in the totals, the last two days in the hours
    -- (the page shows one). Ranges on indexes: an upgrade does not read every stored row.
    INSERT INTO status_delivery_totals
        SELECT destination, status, count(*) FROM deliveries GROUP BY 1, 2;
    INSERT INTO status_event_hours
        SELECT CAST(received_at / 3600 AS INTEGER) * 3600, source, status, coalesce(name, ''),
            coalesce(explicit_id, 0), count(*) FROM events
        WHERE received_at >= CAST(strftime('%s', 'now') AS INTEGER) - 2 * 86400
        GROUP BY 1, 2, 3, 4, 5;
    INSERT INTO status_reject_hours
        SELECT CAST(received_at / 3600 AS INTEGER) * 3600, source, count(*) FROM ingest_rejects
        WHERE received_at >= CAST(strftime('%s', 'now') AS INTEGER) - 2 * 86400 GROUP BY 1, 2;
    INSERT INTO status_delivery_hours
        SELECT CAST(finished_at / 3600 AS INTEGER) * 3600, destination, status,
            CASE WHEN status = 'suppressed' AND json_valid(consent)
                AND json_extract(consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(consent, '$.rule'), '?') ELSE '' END, count(*)
        FROM deliveries
        WHERE destination IN (SELECT destination FROM status_delivery_totals)
            AND status IN ('delivered', 'dead', 'suppressed', 'observed')
            AND finished_at >= CAST(strftime('%s', 'now') AS INTEGER) - 2 * 86400
        GROUP BY 1, 2, 3, 4;
    DROP INDEX deliveries_destination_status;
    """,
    # 8: a delivery row is rewritten at every change of state (leased, attempted), and with
    # the payload (~1 KB), warnings and consent decision (~200 B) in it, every rewrite copied
    # ~1.3 KB and pages of three rows. Those are written once: they move to delivery_details
    # (one row per delivery that has any, same id), and the row keeps what changes or is
    # counted, ~120 bytes. The consent decision's outcome (the report) and, when it
    # suppressed the delivery, its rule (the status counters) stay on the row. Rebuilt
    # rather than altered (SQLite's procedure for changing a table; migrations run with
    # foreign keys off, see upgrade()), so an upgraded store gets dense pages as well.
    """
    CREATE TABLE delivery_details (
        id INTEGER PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
        payload BLOB,                          -- this event's element of the batch
        warnings TEXT,                         -- newline-separated
        consent TEXT                           -- the consent decision (JSON)
    );
    INSERT INTO delivery_details (id, payload, warnings, consent)
        SELECT id, payload, warnings, consent FROM deliveries
        WHERE payload IS NOT NULL OR warnings IS NOT NULL OR consent IS NOT NULL;
    CREATE TABLE deliveries_new (
        id INTEGER PRIMARY KEY,
        event_row INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        status TEXT NOT NULL,                  -- pending | in_flight | delivered | retrying
                                               -- | dead | suppressed | observed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,         -- in_flight: when the lease expires
        lease_until REAL,
        last_reason TEXT,
        updated_at REAL NOT NULL,
        match_quality REAL,
        match_missing TEXT,                    -- space-separated kinds
        created_at REAL,                       -- the retry horizon counts from here
        occurred_at REAL,                      -- the event's time (platform age limits)
        finished_at REAL,                      -- set in terminal states, NULL in queued ones
        consent_outcome TEXT,                  -- allowed | limited | suppressed; NULL: none
        consent_rule TEXT,                     -- the rule, when the outcome is suppressed
        UNIQUE (event_row, destination)
    );
    INSERT INTO deliveries_new (id, event_row, destination, status, attempts, next_attempt_at,
            lease_until, last_reason, updated_at, match_quality, match_missing, created_at,
            occurred_at, finished_at, consent_outcome, consent_rule)
        SELECT id, event_row, destination, status, attempts, next_attempt_at, lease_until,
            last_reason, updated_at, match_quality, match_missing, created_at, occurred_at,
            finished_at, CASE WHEN json_valid(consent) THEN json_extract(consent, '$.outcome') END,
            CASE WHEN json_valid(consent) AND json_extract(consent, '$.outcome') = 'suppressed'
                THEN coalesce(json_extract(consent, '$.rule'), '?') END
        FROM deliveries ORDER BY id;
    -- Its indexes and triggers go with it. Foreign keys are off: nothing cascades, and the
    -- tables referring to deliveries (attempts, delivery_details) refer to the new one once
    -- it has the name.
    DROP TABLE deliveries;
    ALTER TABLE deliveries_new RENAME TO deliveries;
    CREATE INDEX deliveries_queue ON deliveries (destination, next_attempt_at)
        WHERE status IN ('pending', 'retrying', 'in_flight');
    CREATE INDEX deliveries_finished ON deliveries (destination, status, finished_at, created_at);
    -- Migration 7's counters, as they were, with the rule read from consent_rule.
    CREATE TRIGGER status_delivery_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO status_delivery_totals VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_insert_finished AFTER INSERT ON deliveries
        WHEN NEW.finished_at IS NOT NULL BEGIN
        INSERT INTO status_delivery_hours VALUES (
            CAST(NEW.finished_at / 3600 AS INTEGER) * 3600, NEW.destination, NEW.status,
            CASE WHEN NEW.status = 'suppressed' THEN coalesce(NEW.consent_rule, '') ELSE '' END,
            1) ON CONFLICT (hour, destination, status, rule) DO UPDATE
            SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_state AFTER UPDATE OF status ON deliveries
        WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE status_delivery_totals SET deliveries = deliveries - 1
            WHERE destination = OLD.destination AND status = OLD.status;
        INSERT INTO status_delivery_totals VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_finish AFTER UPDATE OF status, finished_at ON deliveries
        WHEN (OLD.finished_at IS NOT NULL OR NEW.finished_at IS NOT NULL)
        AND (OLD.status IS NOT NEW.status OR OLD.finished_at IS NOT NEW.finished_at) BEGIN
        UPDATE status_delivery_hours SET deliveries = deliveries - 1
            WHERE OLD.finished_at IS NOT NULL
            AND hour = CAST(OLD.finished_at / 3600 AS INTEGER) * 3600
            AND destination = OLD.destination AND status = OLD.status
            AND rule = CASE WHEN OLD.status = 'suppressed'
                THEN coalesce(OLD.consent_rule, '') ELSE '' END;
        INSERT INTO status_delivery_hours SELECT
            CAST(NEW.finished_at / 3600 AS INTEGER) * 3600, NEW.destination, NEW.status,
            CASE WHEN NEW.status = 'suppressed' THEN coalesce(NEW.consent_rule, '') ELSE '' END,
            1 WHERE NEW.finished_at IS NOT NULL
            ON CONFLICT (hour, destination, status, rule) DO UPDATE
            SET deliveries = deliveries + 1;
    END;
    CREATE TRIGGER status_delivery_delete AFTER DELETE ON deliveries BEGIN
        UPDATE status_delivery_totals SET deliveries = deliveries - 1
            WHERE destination = OLD.destination AND status = OLD.status;
        UPDATE status_delivery_hours SET deliveries = deliveries - 1
            WHERE OLD.finished_at IS NOT NULL
            AND hour = CAST(OLD.finished_at / 3600 AS INTEGER) * 3600
            AND destination = OLD.destination AND status = OLD.status
            AND rule = CASE WHEN OLD.status = 'suppressed'
                THEN coalesce(OLD.consent_rule, '') ELSE '' END;
    END;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


SECURE_DELETE = {0: "OFF", 1: "ON", 2: "FAST"}


def upgrade(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION in one transaction of its own; (from, to).

    Foreign keys are off meanwhile (SQLite cannot change that inside a transaction): a
    migration that rebuilds a table drops the old one, which with them on would delete
    every row referring to it. Each migration keeps the references whole itself. Dropped
    pages are overwritten (secure_delete): the old copy of a rebuilt table must not linger
    in free pages, or a later erasure (forget) would leave it behind.
    """
    enforced = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    secure = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA secure_delete = ON")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            versions = migrate(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute(f"PRAGMA secure_delete = {SECURE_DELETE.get(secure, 'ON')}")
        conn.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")
    return versions


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION inside the caller's transaction (see upgrade()).

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

"""The deduplication SQL (a mixin of SQLiteStore; see docs/dedup.md).

The first claims of dedup keys, the delivery ledger (event ids a destination already
accepted), pruning old keys, and the read-only aggregates about duplicates: overlaps
between sources and the share of events that carry an explicit event id. The keys are
written with the processed events (SQLiteStore.commit_processed).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracklayerd.store import batch
from tracklayerd.store.base import ExplicitIdShare, Overlap

if TYPE_CHECKING:
    from tracklayerd.store.writer import Writer


class DedupQueries:
    """Dedup keys and the delivery ledger, mixed into SQLiteStore."""

    if TYPE_CHECKING:
        @property
        def writer(self) -> Writer: ...
        async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    async def dedup_seen(self, keys: Sequence[str]) -> dict[str, tuple[int, str, float]]:
        found: dict[str, tuple[int, str, float]] = {}
        for chunk in batch.chunks(list(dict.fromkeys(keys)), 800):
            marks = ",".join("?" * len(chunk))
            for key, row, source, seen_at in await self._fetchall(
                f"SELECT key, event_row, source, seen_at FROM dedup_keys WHERE key IN ({marks})",
                chunk,
            ):
                found[key] = (int(row), source, float(seen_at))
        return found

    async def delivered_event_ids(
        self, destination: str, event_ids: Sequence[str]
    ) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in batch.chunks(list(dict.fromkeys(event_ids)), 800):
            marks = ",".join("?" * len(chunk))
            for event_id, row in await self._fetchall(
                # CROSS JOIN fixes the loop order: from these event ids outwards. Left to
                # itself SQLite walks every delivered row of the destination instead.
                "SELECT e.event_id, min(e.id) FROM events e CROSS JOIN deliveries d"
                " ON d.event_row = e.id AND d.destination = ? AND d.status = 'delivered'"
                f" WHERE e.event_id IN ({marks}) GROUP BY e.event_id", (destination, *chunk),
            ):
                found[event_id] = int(row)
        return found

    async def prune_dedup(self, before: float, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM dedup_keys WHERE key IN (SELECT key FROM dedup_keys"
                " WHERE seen_at < ? LIMIT ?)", (before, limit)).rowcount

        deleted: int = await self.writer.run(job, rows=limit)
        return deleted

    async def dedup_overlaps(self, since: float = 0.0) -> list[Overlap]:
        rows = await self._fetchall(
            "SELECT f.source, e.source, e.name, count(*) FROM events e"
            " JOIN events f ON f.id = e.duplicate_of"
            " WHERE e.duplicate_of IS NOT NULL AND e.received_at >= ?"
            " GROUP BY f.source, e.source, e.name ORDER BY count(*) DESC", (since,))
        return [Overlap(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def explicit_id_share(self, since: float = 0.0) -> list[ExplicitIdShare]:
        rows = await self._fetchall(
            "SELECT source, name, count(*), coalesce(sum(explicit_id), 0) FROM events"
            " WHERE status = 'accepted' AND received_at >= ? GROUP BY source, name"
            " ORDER BY source, name", (since,))
        return [ExplicitIdShare(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

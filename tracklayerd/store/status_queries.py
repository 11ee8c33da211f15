"""The status page's SQL (a mixin of SQLiteStore; see tracklayerd/web/status.py).

The page must answer in well under 300 ms with millions of stored events. Counting a day of
events or deliveries at query time cannot (it took seconds at 1M events on two slow cores),
so the counts come from the hourly counters and per-state totals that triggers (schema.py,
migrations 7 and 8) keep in the same transactions as the rows they count. What still reads the big
tables is bounded: ranges of an index that holds every column read (latencies, the oldest
queued delivery, failed requests), a LIMIT (dead letters, platform answers, rejects'
reasons), or a sample of the latest events (match quality, cross-source duplicates).
Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracklayerd.store.base import (
    QUEUED,
    DeadLetter,
    DeliveryCount,
    EventCount,
    PlatformAnswer,
    QualitySummary,
    RejectCount,
    SuppressionCount,
)

HOUR = 3600
# What the page shows of a platform's answer; the trace has it whole.
ANSWER_CHARS = 4000
# A request that got no 2xx answer. Spelled exactly as requests_failed's WHERE, so SQLite
# uses that (small) partial index.
FAILED_REQUEST = "coalesce(http_status, 0) NOT BETWEEN 200 AND 299"
# A 2xx answer that still carries messages for the operator (Meta's "messages": [...]).
# LIKE first: it is cheap and rules out most answers before any JSON is parsed.
WARNING_ANSWER = (
    "(response LIKE '%\"messages\"%' OR response LIKE '%\"warnings\"%')"
    " AND json_valid(response) AND (coalesce(json_array_length(response, '$.messages'), 0) > 0"
    " OR coalesce(json_array_length(response, '$.warnings'), 0) > 0)"
)
# Score bands of the match-quality distribution, as QualitySummary.bands.
BANDS = (
    "sum(d.match_quality < 2), sum(d.match_quality >= 2 AND d.match_quality < 4),"
    " sum(d.match_quality >= 4 AND d.match_quality < 6),"
    " sum(d.match_quality >= 6 AND d.match_quality < 8), sum(d.match_quality >= 8)"
)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _hour(column: str) -> str:
    return f"CAST({column} / {HOUR} AS INTEGER) * {HOUR}"


class StatusQueries:
    """Read-only aggregates for the status page, mixed into SQLiteStore."""

    if TYPE_CHECKING:
        async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    async def event_counts(self, since: float) -> list[EventCount]:
        rows = await self._fetchall(
            "SELECT source, hour, status, name, explicit, events FROM status_event_hours"
            " WHERE hour >= ? AND events > 0", (_hour_of(since),))
        return [EventCount(source=r[0], hour=int(r[1]), status=r[2], name=r[3] or None,
                           explicit=bool(r[4]), count=int(r[5])) for r in rows]

    async def reject_counts(self, sources: Sequence[str], since: float) -> list[RejectCount]:
        hours = await self._fetchall(
            "SELECT source, hour, rejects FROM status_reject_hours WHERE hour >= ?"
            " AND rejects > 0", (_hour_of(since),))
        counts = [RejectCount(source=r[0], hour=int(r[1]), reason=None, count=int(r[2]),
                              last_at=None) for r in hours]
        for source in sources:
            # The reasons of the latest rejects only: a flood of bad requests must not make
            # the page slow.
            for reason, n, last in await self._fetchall(
                "SELECT reason, count(*), max(received_at) FROM (SELECT reason, received_at"
                " FROM ingest_rejects WHERE source = ? AND received_at >= ?"
                " ORDER BY received_at DESC LIMIT 1000) GROUP BY reason", (source, since)):
                counts.append(RejectCount(source=source, hour=None, reason=reason, count=int(n),
                                          last_at=float(last)))
        return counts

    async def delivery_counts(
        self, destinations: Sequence[str], since: float
    ) -> list[DeliveryCount]:
        if not destinations:
            return []
        rows = await self._fetchall(
            "SELECT destination, status, hour, sum(deliveries) FROM status_delivery_hours"
            f" WHERE hour >= ? AND destination IN ({_marks(destinations)})"
            " GROUP BY 1, 2, 3 HAVING sum(deliveries) > 0", (_hour_of(since), *destinations))
        counts = [DeliveryCount(destination=r[0], status=r[1], hour=int(r[2]), count=int(r[3]))
                  for r in rows]
        totals = {(t.destination, t.status): t.count
                  for t in await self.delivery_totals(destinations)}
        for destination in destinations:
            for status in QUEUED:
                # finished_at IS NULL pins the index prefix, so min() is one seek.
                oldest = await self._fetchall(
                    "SELECT min(created_at) FROM deliveries WHERE destination = ?"
                    " AND status = ? AND finished_at IS NULL", (destination, status))
                counts.append(DeliveryCount(
                    destination=destination, status=status, hour=None,
                    count=totals.get((destination, status), 0),
                    oldest=None if oldest[0][0] is None else float(oldest[0][0])))
        return counts

    async def delivery_totals(self, destinations: Sequence[str]) -> list[DeliveryCount]:
        if not destinations:
            return []
        rows = await self._fetchall(
            "SELECT destination, status, deliveries FROM status_delivery_totals"
            f" WHERE destination IN ({_marks(destinations)}) AND deliveries > 0",
            tuple(destinations))
        return [DeliveryCount(destination=r[0], status=r[1], hour=None, count=int(r[2]))
                for r in rows]

    async def delivery_latencies(self, destination: str, since: float, limit: int) -> list[float]:
        rows = await self._fetchall(
            "SELECT finished_at - created_at FROM deliveries WHERE destination = ?"
            " AND status = 'delivered' AND finished_at >= ? AND created_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT ?", (destination, since, limit))
        return [max(0.0, float(r[0])) for r in rows]

    async def suppression_counts(
        self, destinations: Sequence[str], since: float
    ) -> list[SuppressionCount]:
        if not destinations:
            return []
        rows = await self._fetchall(
            "SELECT destination, rule, sum(deliveries) FROM status_delivery_hours"
            f" WHERE hour >= ? AND destination IN ({_marks(destinations)})"
            " AND status = 'suppressed' GROUP BY 1, 2 HAVING sum(deliveries) > 0",
            (_hour_of(since), *destinations))
        return [SuppressionCount(destination=r[0], rule=r[1] or None, count=int(r[2]))
                for r in rows]

    async def failed_request_counts(self, destination: str, since: float) -> list[tuple[int, int]]:
        rows = await self._fetchall(
            f"SELECT {_hour('started_at')}, count(*) FROM requests"
            f" WHERE destination = ? AND started_at >= ? AND {FAILED_REQUEST} GROUP BY 1",
            (destination, since))
        return [(int(r[0]), int(r[1])) for r in rows]

    async def platform_errors(
        self, destination: str, since: float, limit: int
    ) -> list[PlatformAnswer]:
        rows = await self._fetchall(
            f"SELECT started_at, http_status, substr(response, 1, {ANSWER_CHARS}), error"
            f" FROM requests WHERE destination = ? AND started_at >= ? AND {FAILED_REQUEST}"
            " ORDER BY started_at DESC LIMIT ?", (destination, since, limit))
        return [_answer(destination, r) for r in rows]

    async def platform_warnings(
        self, destination: str, since: float, limit: int, scan: int
    ) -> list[PlatformAnswer]:
        rows = await self._fetchall(
            f"SELECT started_at, http_status, substr(response, 1, {ANSWER_CHARS}), error"
            " FROM (SELECT started_at, http_status, response, error FROM requests"
            " WHERE destination = ? AND started_at >= ? ORDER BY started_at DESC LIMIT ?)"
            f" WHERE http_status BETWEEN 200 AND 299 AND {WARNING_ANSWER}"
            " ORDER BY started_at DESC LIMIT ?", (destination, since, scan, limit))
        return [_answer(destination, r) for r in rows]

    async def last_request(self, destination: str) -> PlatformAnswer | None:
        rows = await self._fetchall(
            "SELECT started_at, http_status, NULL, error FROM requests WHERE destination = ?"
            " ORDER BY started_at DESC LIMIT 1", (destination,))
        return _answer(destination, rows[0]) if rows else None

    async def dead_letters(self, destination: str, limit: int) -> list[DeadLetter]:
        rows = await self._fetchall(
            "SELECT d.event_row, d.finished_at, d.attempts, d.last_reason, e.source, e.name"
            " FROM deliveries d JOIN events e ON e.id = d.event_row"
            " WHERE d.destination = ? AND d.status = 'dead'"
            " ORDER BY d.finished_at DESC LIMIT ?", (destination, limit))
        return [DeadLetter(destination=destination, event_row=int(r[0]),
                           at=None if r[1] is None else float(r[1]), attempts=int(r[2]),
                           reason=r[3], source=r[4], name=r[5]) for r in rows]

    async def recent_events_since(self, limit: int, since: float) -> float:
        rows = await self._fetchall(
            "SELECT received_at FROM events WHERE received_at >= ?"
            " ORDER BY received_at DESC LIMIT 1 OFFSET ?", (since, max(0, limit - 1)))
        return float(rows[0][0]) if rows else since

    async def quality_sample(self, since: float) -> list[QualitySummary]:
        # CROSS JOIN fixes the loop order: from the (few) recent events to their deliveries.
        # Left to itself SQLite walks every delivery of every destination instead. One pass,
        # grouped by the missing identifiers too: reading the delivery rows is the cost.
        rows = await self._fetchall(
            f"SELECT d.destination, e.name, d.match_missing, count(*), sum(d.match_quality),"
            f" {BANDS} FROM events e CROSS JOIN deliveries d ON d.event_row = e.id"
            " WHERE e.received_at >= ? AND d.match_quality IS NOT NULL GROUP BY 1, 2, 3",
            (since,))
        groups: dict[tuple[str, str], list[Any]] = {}
        for destination, name, kinds, count, total, *bands in rows:
            group = groups.setdefault((destination, name), [0, 0.0, [0] * 5, {}])
            group[0] += int(count)
            group[1] += float(total)
            group[2] = [a + int(b) for a, b in zip(group[2], bands, strict=True)]
            for kind in (kinds or "").split():
                group[3][kind] = group[3].get(kind, 0) + int(count)
        return [
            QualitySummary(
                destination=destination, event=name, deliveries=count,
                mean=round(total / count, 2), bands=bands,
                top_missing=sorted(missing.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
            for (destination, name), (count, total, bands, missing) in sorted(groups.items())
        ]

def _hour_of(when: float) -> int:
    return int(when) // HOUR * HOUR


def _answer(destination: str, row: Any) -> PlatformAnswer:
    return PlatformAnswer(destination=destination, at=float(row[0]), http_status=row[1],
                          response=row[2], error=row[3])
